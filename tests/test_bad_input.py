"""Bad input through the CLI: every command x (non-UTF-8 file, folder, missing path, empty file)
gives one `error:` line naming the path (and line) and what was expected; never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charter.cli import app
from charter.data.jsonl import DataError, atomic_write_text, iter_jsonl, read_text_file

BINARY = b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00" * 8  # what a misplaced image looks like
CLASSES = ["binary", "folder", "missing", "empty"]


def make_bad(kind: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "binary":
        path.write_bytes(BINARY)
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_text("")
    return path


def write_yaml(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))  # JSON is YAML
    return str(path)


# Each case: (tmp, bad path, model folder) -> CLI arguments. The bad path goes where a user would
# put it: the command's own file argument, or a file field of its config.
CONFIG_ARG = {
    "run": lambda t, bad, m: ["run", str(bad), "--dry-run"],
    "toy build": lambda t, bad, m: ["toy", "build", str(bad)],
    "train sft": lambda t, bad, m: ["train", "sft", str(bad)],
    "train dpo": lambda t, bad, m: ["train", "dpo", str(bad)],
    "train rm": lambda t, bad, m: ["train", "rm", str(bad)],
    "train grpo": lambda t, bad, m: ["train", "grpo", str(bad)],
    "train sdft": lambda t, bad, m: ["train", "sdft", str(bad)],
    "train ppo": lambda t, bad, m: ["train", "ppo", str(bad)],
    "distill": lambda t, bad, m: ["distill", str(bad)],
    "introspect": lambda t, bad, m: ["introspect", str(bad)],
    "eval": lambda t, bad, m: ["eval", str(bad)],
    "cai revise": lambda t, bad, m: ["cai", "revise", str(bad)],
    "cai label": lambda t, bad, m: ["cai", "label", str(bad)],
    "bootstrap": lambda t, bad, m: ["bootstrap", str(bad)],
}


def _train(kind: str):
    return lambda t, bad, m: ["train", kind, write_yaml(t / "c.yaml", {"model": m, "data": str(bad),
                                                                        "output_dir": str(t / "out")})]


INPUT_FILE = {
    "constitution show": lambda t, bad, m: ["constitution", "show", str(bad)],
    "data validate": lambda t, bad, m: ["data", "validate", str(bad), "--format", "pairs"],
    "data export": lambda t, bad, m: ["data", "export", str(bad), "--format", "sft", "-o", str(t / "o.jsonl")],
    "run constitutions": lambda t, bad, m: ["run", f"constitutions=[{bad}]", "--dry-run"],
    "run eval.prompts_file": lambda t, bad, m: ["run", "--preset", "toy", f"eval.prompts_file={bad}", "--dry-run"],
    "train sft data": _train("sft"),
    "train dpo data": _train("dpo"),
    "train rm data": _train("rm"),
    "train grpo data": _train("grpo"),
    "distill constitution": lambda t, bad, m: [
        "distill", write_yaml(t / "c.yaml", {"constitution": str(bad), "teacher": {"model": m}}), "-o", str(t / "o")],
    "distill general_prompts": lambda t, bad, m: [
        "distill", write_yaml(t / "c.yaml", {"constitution": "sarcasm", "teacher": {"model": m},
                                             "general_prompts": str(bad)}), "-o", str(t / "o")],
    "introspect constitution": lambda t, bad, m: [
        "introspect", write_yaml(t / "c.yaml", {"constitution": str(bad), "backend": {"model": m}}),
        "-o", str(t / "o")],
    "introspect reflection.prompts_file": lambda t, bad, m: [
        "introspect", write_yaml(t / "c.yaml", {"constitution": "sarcasm", "backend": {"model": m},
                                                "reflection": {"prompts_file": str(bad)}}), "-o", str(t / "o")],
    "eval prompts": lambda t, bad, m: [
        "eval", write_yaml(t / "c.yaml", {"prompts": str(bad), "out_dir": str(t / "o"), "evals": ["adherence"],
                                          "persona": "x", "systems": [{"name": "a", "backend": {"model": m}}]})],
    "cai revise principles": lambda t, bad, m: [
        "cai", "revise", write_yaml(t / "c.yaml", {"backend": {"model": m}, "prompts": ["hi"],
                                                   "principles": str(bad), "out_dir": str(t / "o")})],
    "cai revise prompts_file": lambda t, bad, m: [
        "cai", "revise", write_yaml(t / "c.yaml", {"backend": {"model": m}, "prompts_file": str(bad),
                                                   "out_dir": str(t / "o")})],
    "cai label pairs_file": lambda t, bad, m: [
        "cai", "label", write_yaml(t / "c.yaml", {"labeler": {"model": m}, "pairs_file": str(bad),
                                                  "out_dir": str(t / "o")})],
    "cai infer --principles": lambda t, bad, m: ["cai", "infer", m, "-p", "hi", "--principles", str(bad)],
}
SUFFIX = {"constitution": ".yaml", "principles": ".yaml", "prompts_file": ".txt", "general_prompts": ".txt",
          "eval prompts": ".txt"}


def _suffix(case: str) -> str:
    return next((s for key, s in SUFFIX.items() if key in case), ".jsonl")


def _cases():
    for case in INPUT_FILE:
        for kind in CLASSES:
            yield pytest.param(INPUT_FILE[case], _suffix(case), kind, id=f"{case}-{kind}")
    for case in CONFIG_ARG:  # an empty config is valid YAML (all defaults); see test_empty_config_names_fields
        for kind in ("binary", "folder", "missing"):
            yield pytest.param(CONFIG_ARG[case], ".yaml", kind, id=f"{case} CONFIG-{kind}")


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    out = result.output
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize("make_args,suffix,kind", list(_cases()))
def test_bad_input_is_one_line_naming_the_path(make_args, suffix, kind, tmp_path, tiny_model_dir):
    bad = tmp_path / "in" / f"bad{suffix}"
    if kind != "missing":
        make_bad(kind, bad)
    result = invoke(make_args(tmp_path, bad, str(tiny_model_dir)))
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if str(bad) in ln]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert "expected" in line, line
    if kind == "binary":
        assert f"{bad}:1: not UTF-8 text" in line
    if kind == "folder":
        assert "is a folder" in line
    if kind == "missing":
        assert "no such file" in line
    if kind == "empty":
        assert "empty file" in line or "no records" in line


def test_empty_config_names_fields(tmp_path):
    cfg = make_bad("empty", tmp_path / "sft.yaml")
    result = invoke(["train", "sft", str(cfg)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {cfg}: invalid SFTConfig")
    assert "  data: Field required" in result.stderr


def test_input_error_exit_code_and_format(tmp_path):
    bad = make_bad("folder", tmp_path / "c.yaml")
    result = invoke(["constitution", "show", str(bad)])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {bad}: is a folder; expected a constitution "
                             "(Charter YAML, OCT JSON array or OCT JSONL)\n")
    assert result.stdout == ""


def test_template_refusal_is_one_line(tmp_path, tiny_model_dir):
    """A model whose chat template raises (e.g. no system role) is named in one line, not a jinja traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text("{{ raise_exception('Conversation roles must alternate') }}")
    result = invoke(["cai", "infer", str(model), "-p", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "error: the chat template rejected the conversation (Conversation roles must alternate): merge "
        "consecutive messages of the same role so user and assistant turns alternate")


def test_installed_script_prints_no_traceback(tmp_path):
    """The real process, not CliRunner: the same one line on stderr and exit code 2."""
    bad = make_bad("binary", tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "charter.cli", "constitution", "show", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:1: not UTF-8 text (byte 0x89)")


def test_validate_reports_empty_file(tmp_path):
    bad = make_bad("empty", tmp_path / "d.jsonl")
    result = invoke(["data", "validate", str(bad), "--format", "sft"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {bad}: no records; expected JSONL with one object per line\n"


def test_a_bad_line_does_not_hide_the_rows_after_it(tmp_path):
    """validate lists every bad line, and export --skip-bad keeps every good row (reading used to stop
    at the first line that did not parse, silently dropping the rest)."""
    src = tmp_path / "d.jsonl"
    row = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    src.write_text(f"{row}\n{{not json\n{row}\n[1]\n{row}\n")
    result = invoke(["data", "validate", str(src), "--format", "sft"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"{src}:2: invalid JSON (Expecting property name enclosed in double "
                                          "quotes at column 2)", f"{src}:4: expected a JSON object, got list"]
    assert result.stdout == f"{src}: 3 ok, 2 bad (sft)\n"
    out = tmp_path / "o.jsonl"
    result = invoke(["data", "export", str(src), "--format", "sft", "-o", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert out.read_text() == f"{row}\n" * 3


# ------------------------------------------------------------------ the shared readers


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": "\xff"}\n')
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"a": 1})
    assert next(rows) == (2, {"a": 2})
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8 text \(byte 0xff\); expected JSONL"):
        next(rows)
    text = tmp_path / "t.txt"
    text.write_bytes("one\ntwo é\n".encode() + b"three \xe9\n")  # a valid é on line 2, a Latin-1 one on 3
    with pytest.raises(DataError, match=rf"^{text}:3: not UTF-8 text \(byte 0xe9\); expected lines"):
        read_text_file(text, "lines")


def test_missing_or_folder_fails_at_the_call(tmp_path):
    """File checks run when `iter_jsonl` is called, before any row is asked for."""
    with pytest.raises(DataError, match="no such file"):
        iter_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        iter_jsonl(tmp_path)


def test_empty_jsonl_only_where_records_are_required(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n")
    assert list(iter_jsonl(path)) == []  # resumable stores start empty
    with pytest.raises(DataError, match=rf"^{path}: no records; expected JSONL with one object per line$"):
        list(iter_jsonl(path, allow_empty=False))
    assert read_text_file(path, "x", allow_empty=True) == "\n  \n"
    with pytest.raises(DataError, match=rf"^{path}: empty file; expected x$"):
        read_text_file(path, "x")


def test_unreadable_file_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=rf"^{path}: cannot read \(Permission denied\); expected x$"):
        read_text_file(path, "x")


def test_write_to_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path}: is a folder; expected a file path to write$"):
        atomic_write_text(tmp_path, "x")
