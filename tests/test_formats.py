"""Dataset formats: HH-RLHF / implicit / explicit pairs -> Together DPO; chat / Alpaca -> SFT; validation."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from charter.cli import app
from charter.data.formats import detect_format, export_file, normalise_pair, validate_file
from charter.data.jsonl import DataError, read_jsonl

U = {"role": "user", "content": "Hi?"}
A1, A2 = {"role": "assistant", "content": "Hello."}, {"role": "assistant", "content": "Go away."}
HH = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant: Fine, thanks.",
      "rejected": "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant: Whatever."}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_detect_and_normalise_every_pair_form():
    explicit = {"prompt": [U], "chosen": [A1], "rejected": [A2]}
    strings = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    implicit = {"chosen": [U, A1], "rejected": [U, A2]}
    assert [detect_format(r) for r in (explicit, strings, implicit, HH)] == ["pair", "pair", "pair-implicit", "hh-rlhf"]
    for r in (explicit, strings, implicit):
        assert normalise_pair(r) == ([U], [A1], [A2])
    prompt, chosen, rejected = normalise_pair(HH)  # prompt = everything up to the LAST "\n\nAssistant:"
    assert [m["content"] for m in prompt] == ["Hi?", "Hello.", "And you?"]
    assert chosen[0]["content"] == "Fine, thanks." and rejected[0]["content"] == "Whatever."


@pytest.mark.parametrize("row,msg", [
    ({"chosen": HH["chosen"], "rejected": HH["chosen"]}, "identical"),
    ({"chosen": "\n\nHuman: Hi?\n\nAssistant: ", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."}, "chosen[0].content: empty"),
    ({"chosen": "\n\nHuman: Hi?\n\nAssistant: A.", "rejected": "\n\nHuman: Bye?\n\nAssistant: B."}, "share"),
    ({"prompt": [U], "chosen": [A1], "rejected": [{"role": "user", "content": "x"}]}, "rejected[0].role"),
    ({"prompt": [U], "chosen": [A1]}, "rejected: missing"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": [A1], "rejected": [A2]}, "prompt[0].role"),
])
def test_bad_pairs_are_flagged(row, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        normalise_pair(row)


def test_export_together_dpo_and_validate_roundtrip(tmp_path):
    src = write(tmp_path / "pairs.jsonl", [HH, {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.",
                                            "meta": {"teacher": "t"}}])
    n, errors = export_file(src, tmp_path / "out.jsonl", "together-dpo")
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert n == 2 and not errors
    assert rows[1] == {"input": {"messages": [U]}, "preferred_output": [A1], "non_preferred_output": [A2]}
    assert validate_file(tmp_path / "out.jsonl", "together-dpo") == (2, [])


def test_export_sft_from_chat_alpaca_and_pairs(tmp_path):
    src = write(tmp_path / "mix.jsonl", [{"messages": [U, A1]},
                                         {"instruction": "Add.", "input": "1+1", "output": "2."},
                                         {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}])
    export_file(src, tmp_path / "sft.jsonl", "together-sft")
    rows = read_jsonl(tmp_path / "sft.jsonl")
    assert rows[1]["messages"] == [{"role": "user", "content": "Add.\n\n1+1"}, {"role": "assistant", "content": "2."}]
    assert rows[2]["messages"] == [U, A1]
    assert validate_file(tmp_path / "sft.jsonl", "together-sft") == (3, [])


def test_validate_reports_file_line_and_field_for_every_bad_row(tmp_path):
    bad = write(tmp_path / "bad.jsonl", [
        {"input": {"messages": [U]}, "preferred_output": [A1], "non_preferred_output": [A2]},  # ok
        {"input": {"messages": [U]}, "preferred_output": [A1]},  # 2: missing field
        {"input": {"messages": [U]}, "preferred_output": [A1], "non_preferred_output": [A1]},  # 3: identical
        {"input": {"messages": [{"role": "user"}]}, "preferred_output": [A1], "non_preferred_output": [A2]},  # 4
        {"input": {"messages": [U]}, "preferred_output": [A1], "non_preferred_output": [A2], "x": 1},  # 5
    ])
    ok, errors = validate_file(bad, "together-dpo")
    assert ok == 1 and len(errors) == 4
    assert errors[0] == f"{bad}:2: non_preferred_output: missing"
    assert errors[1].startswith(f"{bad}:3: ") and "identical" in errors[1]
    assert errors[2].startswith(f"{bad}:4: input.messages[0].content")
    assert errors[3].startswith(f"{bad}:5: x")
    with pytest.raises(DataError, match="3 bad row"):  # the extra field is fine when converting
        export_file(bad, tmp_path / "o.jsonl", "together-sft")
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_export_and_validate(tmp_path):
    src = write(tmp_path / "pairs.jsonl", [HH, '{"chosen": "x"'])
    r = CliRunner().invoke(app, ["data", "export", str(src), "--format", "together-dpo", "-o", str(tmp_path / "o.jsonl"),
                                 "--skip-bad"])
    assert r.exit_code == 0 and "wrote 1 rows" in r.output, r.output
    r = CliRunner().invoke(app, ["data", "validate", str(src), "--format", "pairs"])
    assert r.exit_code == 1 and f"{src}:2: invalid JSON" in r.output
    r = CliRunner().invoke(app, ["data", "validate", str(tmp_path / "o.jsonl"), "--format", "together-dpo"])
    assert r.exit_code == 0 and "1 ok, 0 bad" in r.output
