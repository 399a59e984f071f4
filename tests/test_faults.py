"""Faults, each with a test (issue 16): SIGTERM, a full disk, a torn records file, a stage output
corrupted after it finished, and an API server that is gone. Each ends in one clear line."""
from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import sys

import pytest
from typer.testing import CliRunner

import charter.integrity
from charter.cli import app
from charter.data.jsonl import DataError, RecordStore, atomic_write_text, read_jsonl, read_records
from charter.faults import DiskFull, Terminated, signals_interrupt
from charter.run.engine import Pipeline, Stage, load_manifest


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def no_temp_files(folder) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


# ---------------------------------------------------------------- a full disk

def test_disk_full_during_an_atomic_write_leaves_the_good_file_in_place(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    atomic_write_text(path, "good\n")
    monkeypatch.setattr(os, "fsync", enospc)  # the data did not reach the disk
    with pytest.raises(DiskFull) as e:
        atomic_write_text(path, "half of a new one")
    assert str(e.value).startswith(f"{path}: no space left on device while writing; nothing half-written was kept.")
    assert path.read_text() == "good\n" and no_temp_files(tmp_path) == []


class HalfThenFull:
    """A store's file that takes half of a record, then reports a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> int:
        self.f.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_disk_full_during_a_record_append_cuts_the_half_record_back_off(tmp_path):
    path = tmp_path / "answers.jsonl"
    with RecordStore(path) as store:
        store.add({"id": "a", "text": "one"})
        real, store._f = store._f, HalfThenFull(store._f)
        with pytest.raises(DiskFull, match=f"{path}: no space left on device"):
            store.add({"id": "b", "text": "two " * 100})
        assert "b" not in store
        store._f = real  # space freed: the same store goes on
        assert store.add({"id": "b", "text": "two"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]


def test_disk_full_in_a_command_is_one_line(tmp_path, monkeypatch):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("previous export\n")
    monkeypatch.setattr(os, "fsync", enospc)
    res = CliRunner().invoke(app, ["data", "export", str(src), "--format", "sft", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "Traceback" not in res.output
    assert res.stderr.startswith(f"error: {out}: no space left on device while writing")
    assert out.read_text() == "previous export\n"


# ---------------------------------------------------------------- a torn records file

def test_a_torn_last_line_is_repaired_by_the_store_and_refused_by_a_reader(tmp_path, capsys):
    path = tmp_path / "teacher.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "text": "cut mid-wr')
    with pytest.raises(DataError, match=f"{path}:3: invalid JSON"):
        read_records(path)  # a finished output is never silently shortened
    with RecordStore(path) as store:
        assert len(store) == 2 and store.repaired
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert f"warning: {path}:3: removed a torn last record" in capsys.readouterr().err


# ---------------------------------------------------------------- a stage output corrupted later

def model_pipeline(calls: list[str]) -> Pipeline:
    def train(ctx):
        calls.append("train")
        (ctx.out_dir / "model.safetensors").write_bytes(bytes(range(256)) * 64)
        (ctx.out_dir / "config.json").write_text("{}")

    def use(ctx):
        calls.append("use")
        blob = (ctx.input_dir("train") / "model.safetensors").read_bytes()
        assert len(blob) == 256 * 64, "a truncated model reached the next stage"
        (ctx.out_dir / "out.txt").write_text(str(sum(blob)))

    return Pipeline([Stage("train", train), Stage("use", use, ["train"])])


def test_a_truncated_model_is_caught_by_the_manifest_and_its_stage_reruns(tmp_path):
    calls: list[str] = []
    p = model_pipeline(calls)
    m = p.run({}, tmp_path, seed=0, log=lambda _: None)
    table = m["stages"]["train"]["files"]
    assert table["model.safetensors"][0] == 256 * 64 and set(table) == {"model.safetensors", "config.json"}
    weights = tmp_path / "train" / "model.safetensors"
    os.truncate(weights, 100)
    plan = {i.stage: (i.action, i.reason) for i in p.plan({}, tmp_path, 0)}
    assert plan["train"] == ("run", "outputs missing or modified")
    calls.clear()
    p.run({}, tmp_path, seed=0, log=lambda _: None)
    assert calls == ["train"]  # same output again: `use` stays cached
    assert weights.stat().st_size == 256 * 64
    (tmp_path / "train" / "config.json").unlink()
    assert {i.stage: i.action for i in p.plan({}, tmp_path, 0)}["train"] == "run"


def test_the_check_reads_no_file_whose_size_and_mtime_match(tmp_path, monkeypatch):
    p = model_pipeline([])
    p.run({}, tmp_path, seed=0, log=lambda _: None)
    hashed: list[str] = []
    real = charter.integrity.file_hash
    monkeypatch.setattr(charter.integrity, "file_hash", lambda path: hashed.append(path.name) or real(path))
    assert [i.action for i in p.plan({}, tmp_path, 0)] == ["cached", "cached"]
    assert hashed == []
    os.utime(tmp_path / "train" / "model.safetensors", ns=(1, 1))  # touched, same bytes: hashed, still cached
    assert [i.action for i in p.plan({}, tmp_path, 0)] == ["cached", "cached"]
    assert hashed == ["model.safetensors"]
    (tmp_path / "train" / "model.safetensors").write_bytes(bytes(256 * 64))  # same size, new bytes
    assert [i.action for i in p.plan({}, tmp_path, 0)][0] == "run"


# ---------------------------------------------------------------- SIGTERM and Ctrl-C

def writer_pipeline(kill_at: int | None) -> Pipeline:
    def gen(ctx):
        with RecordStore(ctx.out_dir / "records.jsonl") as store:
            for i in range(5):
                if i == kill_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                store.add({"id": str(i), "v": i * i})
        return {"records": 5}

    return Pipeline([Stage("gen", gen)])


def test_sigterm_unwinds_like_ctrl_c_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
    with signals_interrupt(), pytest.raises(Terminated):
        writer_pipeline(kill_at=3).run({}, tmp_path / "r", seed=0, log=lambda _: None)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the block
    assert load_manifest(tmp_path / "r")["stages"]["gen"]["status"] == "running"
    assert [r["id"] for r in read_jsonl(tmp_path / "r" / "gen" / "records.jsonl")] == ["0", "1", "2"]
    writer_pipeline(kill_at=None).run({}, tmp_path / "r", seed=0, log=lambda _: None)
    writer_pipeline(kill_at=None).run({}, tmp_path / "u", seed=0, log=lambda _: None)
    assert (tmp_path / "r" / "gen" / "records.jsonl").read_text() == (tmp_path / "u" / "gen" / "records.jsonl").read_text()
    assert no_temp_files(tmp_path) == []


def test_sigterm_in_a_command_prints_the_command_that_resumes(tmp_path, monkeypatch):
    import charter.run.stages

    run_dir = tmp_path / "run"
    argv = ["charter", "run", "--preset", "toy", "--run-dir", str(run_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(charter.run.stages, "build_pipeline",
                        lambda method="dpo", train_rm=False: writer_pipeline(kill_at=2))
    res = CliRunner().invoke(app, argv[1:])
    assert res.exit_code == 128 + signal.SIGTERM, res.output
    assert "Traceback" not in res.output
    assert res.stderr.strip().splitlines()[-1] == (
        f"interrupted (SIGTERM); finished records are kept. Resume with: charter run --preset toy --run-dir {run_dir}")
    from charter.locks import lock_files

    assert not lock_files(run_dir)[1].exists()  # the folder is free again
    monkeypatch.setattr(charter.run.stages, "build_pipeline",
                        lambda method="dpo", train_rm=False: writer_pipeline(kill_at=None))
    res = CliRunner().invoke(app, argv[1:])
    assert res.exit_code == 0, res.output
    assert [r["v"] for r in read_jsonl(run_dir / "gen" / "records.jsonl")] == [0, 1, 4, 9, 16]


# ---------------------------------------------------------------- a server that is gone

def test_a_dead_server_ends_a_run_in_one_line_after_its_retries(tmp_path, monkeypatch):
    from serve_fixture import free_port
    from talker import build_talker

    student = build_talker(tmp_path / "student")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    args = ["run", "--preset", "toy", f"student.model={student}", "eval.prompts_file=toy", "constitutions=[toy:warm]",
            "teacher.kind=openai", "teacher.model=teacher", f"teacher.base_url={url}", "teacher.max_retries=2",
            "teacher.retry_backoff=0.01", "--run-dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["charter", *args])  # what the shell would hand the command
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {url}/chat/completions: failed after 3 attempts (ConnectError")
    assert last.endswith("finished records are kept: once the server answers, resume with: charter "
                         + shlex.join(args)), last  # quoted, ready to paste into a shell


@pytest.mark.slow
def test_sigterm_mid_run_then_the_printed_command_finishes_it_like_a_lone_run(tmp_path):
    """A real `charter run` in its own process: SIGTERM while a stage runs, then the command it
    printed: the summary equals an uninterrupted run's, with no torn or temporary file left."""
    import time

    from talker import build_talker, charter, tiny_run

    talker = build_talker(tmp_path / "talker")
    lone = charter(*tiny_run(talker, tmp_path / "lone"))
    assert lone.wait(timeout=300) == 0, lone.stderr.read()[-3000:]
    proc = charter(*tiny_run(talker, tmp_path / "run"))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        stages = load_manifest(tmp_path / "run")["stages"] if (tmp_path / "run" / "manifest.json").exists() else {}
        if stages.get("teacher", {}).get("status") in ("running", "done"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM); finished records are kept. Resume with: charter run ")
    assert no_temp_files(tmp_path / "run") == []
    for f in (tmp_path / "run").rglob("*.jsonl"):
        read_jsonl(f)  # every line whole
    resume = charter(*shlex.split(last.split("Resume with: ")[1])[1:])
    assert resume.wait(timeout=300) == 0, resume.stderr.read()[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == \
        json.loads((tmp_path / "lone" / "summary.json").read_text())
