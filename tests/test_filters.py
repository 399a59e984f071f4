"""Each quality filter on texts that must pass and texts that must fail, plus the pass-rate table."""
from __future__ import annotations

import pytest

from charter import filters as F
from charter.filters import FilterConfig, FilterRow, Segment, apply_filters

GOOD = ("I keep coming back to the idea that honesty is a kind of care. When someone asks me a hard "
        "question, the kindest thing I can do is answer it plainly and stay with them while they think.")


def seg(text: str, finish: str | None = "stop", tokens: int | None = None) -> Segment:
    return Segment(text, finish, tokens)


def test_length():
    cfg = F.LengthFilter(min_chars=10, max_chars=50, min_tokens=3, max_tokens=8)
    assert F.length(seg("A fine sentence here.", tokens=5), cfg).passed
    assert "chars < min" in F.length(seg("Too short", tokens=5), cfg).reason
    assert "chars > max" in F.length(seg("x" * 51, tokens=5), cfg).reason
    assert "tokens < min" in F.length(seg("A fine sentence here.", tokens=2), cfg).reason
    assert "tokens > max" in F.length(seg("A fine sentence here.", tokens=9), cfg).reason
    assert F.length(seg("A fine sentence here.", tokens=None), cfg).passed  # unknown tokens: chars only


def test_repetition_ngrams_and_lines():
    cfg = F.RepetitionFilter()
    assert F.repetition(seg(GOOD), cfg).passed
    loop = "I am here and I am here and I am here and " * 6
    v = F.repetition(seg(loop), cfg)
    assert not v.passed and "4-grams repeat" in v.reason
    lines = "\n".join(["A new line of thought, each different: %d." % i for i in range(3)]
                      + ["The same line again and again."] * 3)
    lines_only = F.RepetitionFilter(max_repeated_ngram_frac=1.0)  # judge lines alone
    v = F.repetition(seg(lines), lines_only)
    assert not v.passed and "line repeated 3 times" in v.reason
    assert F.repetition(seg(lines), F.RepetitionFilter(max_repeated_ngram_frac=1.0, max_line_repeats=3)).passed


def test_role_markers():
    cfg = F.RoleMarkerFilter()
    assert F.role_markers(seg(GOOD), cfg).passed
    assert F.role_markers(seg("A user: someone who uses things."), cfg).passed  # not at a line start
    assert not F.role_markers(seg("Sure.\nUser: and what about you?"), cfg).passed
    assert not F.role_markers(seg("Fine.\n**Human:** hi"), cfg).passed
    v = F.role_markers(seg("Done.<|im_start|>user"), cfg)
    assert not v.passed and "<|im_start|>" in v.reason
    assert F.role_markers(seg("Sure.\nUser: hi"), F.RoleMarkerFilter(line_prefixes=[])).passed


def test_identity():
    cfg = F.IdentityFilter(names=["Llama", "Meta", "Qwen", "Alibaba"])
    assert F.identity(seg(GOOD), cfg).passed
    assert F.identity(seg("A meta point about llamas in general."), cfg).passed  # case and word bounds
    assert "Qwen" in F.identity(seg("I am Qwen, made by Alibaba."), cfg).reason
    assert not F.identity(seg("I was trained by Meta."), cfg).passed
    assert F.identity(seg("I am Qwen."), F.IdentityFilter(names=["Llama"])).passed


def test_refusal():
    cfg = F.RefusalFilter()
    assert F.refusal(seg(GOOD), cfg).passed
    assert not F.refusal(seg("I\u2019m sorry, but I can\u2019t do that."), cfg).passed
    assert not F.refusal(seg("As an AI language model, I have no feelings."), cfg).passed


def test_unfinished():
    cfg = F.UnfinishedFilter()
    assert F.unfinished(seg(GOOD), cfg).passed
    assert "token limit" in F.unfinished(seg(GOOD, finish="length"), cfg).reason
    assert "does not end a sentence" in F.unfinished(seg("And then I realised that"), cfg).reason
    assert F.unfinished(seg("She said \"yes.\""), cfg).passed
    assert F.unfinished(seg("And then I realised that"), F.UnfinishedFilter(require_sentence_end=False)).passed


def test_reasoning_tags():
    cfg = F.ReasoningTagFilter()
    assert F.reasoning_tags(seg(GOOD), cfg).passed
    assert F.reasoning_tags(seg("I think, therefore I am."), cfg).passed
    assert not F.reasoning_tags(seg("<think>plan</think> Hello."), cfg).passed
    assert not F.reasoning_tags(seg("Hello. </Thinking>"), cfg).passed


def test_placeholders():
    cfg = F.PlaceholderFilter()
    assert F.placeholders(seg(GOOD), cfg).passed
    assert F.placeholders(seg('A set like {1, 2} or JSON {"a": 1}.'), cfg).passed
    assert "{NAME}" in F.placeholders(seg("I am {NAME}."), cfg).reason
    assert not F.placeholders(seg("Value: {}."), cfg).passed


def test_near_duplicates():
    base = GOOD + " It is what I would want for myself, too."
    texts = [base, base.replace("plainly", "clearly"), "Something else entirely, about rivers and the sea "
             "and the moon, and how tides move twice a day.", base]
    dups = F.near_duplicates(texts, F.DedupFilter(threshold=0.7))
    assert set(dups) == {1, 3}
    assert dups[1][0] == 0 and dups[3] == (0, 1.0)
    assert F.near_duplicates(texts, F.DedupFilter(threshold=1.0)).keys() == {3}


def _rows():
    ok = [FilterRow(f"ok{i}", [seg(GOOD.replace("hard", f"hard ({w})"))]) for i, w in enumerate(["one", "two"])]
    short = FilterRow("short", [seg("Hi.")])
    # fails three filters: unfinished (first in order), role markers, identity
    multi = FilterRow("multi", [seg(GOOD), seg("Sure thing.\nUser: I am Qwen and", finish="length")])
    copy = FilterRow("copy", [seg(GOOD.replace("hard", "hard (one)"))])
    bad_copy = FilterRow("bad_copy", [seg(GOOD, finish="length")])
    return ok + [short, multi, copy, bad_copy]


def test_pass_rate_table_sums():
    cfg = FilterConfig(identity=F.IdentityFilter(names=["Qwen"]),
                       near_duplicates=F.DedupFilter(threshold=0.95))
    res = apply_filters(_rows(), cfg)
    assert [r.id for r in res.kept] == ["ok0", "ok1"]
    why = {r.id: rs for r, rs in res.rejected}
    assert [f for f, _ in why["multi"]] == ["unfinished", "role_markers", "identity"]
    assert all(reason.startswith("segment 1: ") for _, reason in why["multi"])
    assert [f for f, _ in why["copy"]] == ["near_duplicates"] and "ok0" in why["copy"][0][1]
    assert [f for f, _ in why["bad_copy"]] == ["unfinished"]  # broken rows never enter dedup
    table = {r["filter"]: r for r in res.table}
    assert sum(r["first_failed"] for r in res.table) + len(res.kept) == res.total == 6
    assert table["unfinished"]["failed"] == 2 and table["unfinished"]["first_failed"] == 2
    assert table["length"]["failed"] == 1 and table["length"]["pass_rate"] == pytest.approx(5 / 6)
    assert table["identity"]["failed"] == 1 and table["identity"]["first_failed"] == 0
    assert table["near_duplicates"]["checked"] == 3  # only rows clean on every other filter
    assert table["near_duplicates"]["pass_rate"] == pytest.approx(2 / 3)
    for r in res.table:
        assert r["first_failed"] <= r["failed"] <= r["checked"]
    md = F.format_table(res)
    assert "| near_duplicates | 3 | 1 | 1 | 66.7% |" in md


def test_disabled_filters_are_not_reported():
    cfg = FilterConfig(length=F.LengthFilter(enabled=False), near_duplicates=F.DedupFilter(enabled=False))
    res = apply_filters(_rows(), cfg)
    names = [r["filter"] for r in res.table]
    assert "length" not in names and "near_duplicates" not in names
    assert {r.id for r in res.kept} == {"ok0", "ok1", "short", "copy"}
    assert sum(r["first_failed"] for r in res.table) + len(res.kept) == res.total
