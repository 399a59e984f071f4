"""Records are unique by id everywhere (issue 16): planted duplicates meet each guard."""
from __future__ import annotations

import json

import pytest

from charter.data.jsonl import DataError, RecordStore, read_jsonl, read_records, write_jsonl
from charter.report import summarize


def test_two_unlocked_writers_leave_duplicates_that_the_store_drops_and_rewrites(tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    first, second = RecordStore(path), RecordStore(path)  # two processes that did not take the lock
    for store in (first, second):
        store.add({"id": "a", "text": "one"})
        store.add({"id": "b", "text": "two"})
    first.close()
    second.close()
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "a", "b"]
    with RecordStore(path) as store:
        assert len(store) == 2 and store.repeats == 2
        assert not store.add({"id": "a", "text": "again"})  # appends only ids it does not hold
        assert store.add({"id": "c", "text": "three"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]  # rewritten: each id once
    assert f"{path}: dropped 2 record(s) whose 'id' was already stored (first kept)" in capsys.readouterr().err


def test_loader_keeps_the_first_of_each_id_and_says_how_many_it_dropped(tmp_path, capsys):
    path = tmp_path / "reflection.jsonl"
    write_jsonl(path, [{"id": "x", "v": 1}, {"id": "y", "v": 2}, {"id": "x", "v": 3}, {"id": "x", "v": 4}])
    assert read_records(path) == [{"id": "x", "v": 1}, {"id": "y", "v": 2}]
    assert f"warning: {path}: dropped 2 record(s) whose 'id' was already in the file" in capsys.readouterr().err
    write_jsonl(path, [{"id": "x"}, {"v": 2}])
    with pytest.raises(DataError, match=f"{path}:2: record has no 'id' field"):
        read_records(path)


def _replies(system: str, k: int, n: int) -> list[dict]:
    return [{"id": f"{system}-{i}", "persona": "warm", "system": system, "prompt": f"q{i}", "reply": f"r{i}",
             "label": "warm" if i < k else "neutral", "well_formed": True, "relevant": True} for i in range(n)]


def test_evaluation_counts_each_system_prompt_reply_once(tmp_path, capsys):
    """The issue's case: every eval reply stored twice doubled n and narrowed the Wilson interval."""
    rows = _replies("dpo", 19, 20) + _replies("dpo+sft", 20, 20)
    (tmp_path / "once" / "eval").mkdir(parents=True)
    write_jsonl(tmp_path / "once" / "eval" / "replies.jsonl", rows)
    doubled = rows + [{**r, "id": r["id"]} for r in rows]
    (tmp_path / "twice" / "eval").mkdir(parents=True)
    write_jsonl(tmp_path / "twice" / "eval" / "replies.jsonl", doubled)
    once, twice = summarize(tmp_path / "once"), summarize(tmp_path / "twice")
    assert twice["adherence"]["dpo"]["pooled"] == once["adherence"]["dpo"]["pooled"]
    assert twice["adherence"]["dpo"]["pooled"]["n"] == 20
    assert twice["paired"] == once["paired"] and twice["paired"]["dpo+sft vs dpo"]["n"] == 20
    assert (once["repeated_replies_dropped"], twice["repeated_replies_dropped"]) == (0, 40)
    assert "40 repeated (persona, system, prompt) replies counted once" in capsys.readouterr().err
    json.dumps(twice)  # still plain JSON
