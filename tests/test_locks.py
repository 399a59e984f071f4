"""One writer per output folder (issue 16): a second `charter run` on a live folder exits at once
with one line naming the holder; a lock left by a dead holder is taken over with a message."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charter.faults import RunError
from charter.locks import FolderInUse, hold_folder, lock_files, read_holder
from talker import build_talker, charter, tiny_run

ROOT = Path(__file__).parents[1]


def hold_in_child(folder: Path) -> subprocess.Popen:
    """Another process holding `folder` until killed; returns once it holds it."""
    code = ("import sys, time; from charter.locks import hold_folder\n"
            "with hold_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_a_second_writer_naming_pid_host_and_start(tmp_path):
    holder = hold_in_child(tmp_path / "run")
    try:
        with pytest.raises(FolderInUse) as e:
            with hold_folder(tmp_path / "run"):
                pass
        msg = str(e.value)
        assert isinstance(e.value, RunError) and "\n" not in msg
        assert msg.startswith(f"{tmp_path / 'run'}: in use by pid {holder.pid} on host {socket.gethostname()}, started 20")
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_kill_9_is_taken_over_with_a_message(tmp_path):
    holder = hold_in_child(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_holder(tmp_path / "run")["pid"] == holder.pid  # the dead holder's record is left behind
    said: list[str] = []
    with hold_folder(tmp_path / "run", log=said.append):
        assert read_holder(tmp_path / "run")["pid"] == os.getpid()
    assert len(said) == 1
    assert said[0].startswith(f"{tmp_path / 'run'}: taking over from pid {holder.pid} on host "
                              f"{socket.gethostname()}, started ")
    assert said[0].endswith(": that process is gone")
    assert not lock_files(tmp_path / "run")[1].exists()  # released: the record goes with the lock


@pytest.mark.parametrize("age, refused", [(10.0, True), (3600.0, False)])
def test_another_hosts_record_is_honoured_until_its_heartbeat_is_stale(tmp_path, age, refused):
    """OS locks are not shared between hosts on every network filesystem: a fresh heartbeat from
    another host keeps the folder; one older than STALE_AFTER_S is a dead holder's."""
    record = lock_files(tmp_path / "run")[1]
    record.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2026-11-29T10:00:00+00:00",
                                  "command": "charter run", "heartbeat": time.time() - age}))
    said: list[str] = []
    if refused:
        with pytest.raises(FolderInUse, match="in use by pid 4242 on host elsewhere, started 2026-11-29T10:00:00"):
            with hold_folder(tmp_path / "run", log=said.append):
                pass
        assert read_holder(tmp_path / "run")["pid"] == 4242  # another host's record is left alone
    else:
        with hold_folder(tmp_path / "run", log=said.append):
            pass
        assert len(said) == 1 and "taking over from pid 4242 on host elsewhere" in said[0]
        assert "no heartbeat for 3600s" in said[0]


@pytest.fixture(scope="module")
def talker_dir(tmp_path_factory):
    return build_talker(tmp_path_factory.mktemp("talker") / "model")


@pytest.mark.slow
def test_two_concurrent_runs_on_one_folder(tmp_path, talker_dir):
    """The second `charter run` exits non-zero within 10 s with one line naming the holder; the
    first finishes with the summary of a lone run and no duplicated record."""
    from charter.data.jsonl import read_jsonl

    lone = charter(*tiny_run(talker_dir, tmp_path / "lone"))
    assert lone.wait(timeout=300) == 0, lone.stderr.read()[-3000:]
    first = charter(*tiny_run(talker_dir, tmp_path / "shared"))
    deadline = time.monotonic() + 120
    while read_holder(tmp_path / "shared") is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # keep the first one mid-run, alive, while the second starts
    try:
        t0 = time.monotonic()
        second = charter(*tiny_run(talker_dir, tmp_path / "shared"))
        _, err = second.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and took < 10, (second.returncode, took, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"error: {tmp_path / 'shared'}: in use by pid {first.pid} on host "
                               f"{socket.gethostname()}, started ")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "shared" / "summary.json").read_text()) == \
        json.loads((tmp_path / "lone" / "summary.json").read_text())
    for f in (tmp_path / "shared").rglob("*.jsonl"):
        ids = [r["id"] for r in read_jsonl(f) if "id" in r]
        assert len(ids) == len(set(ids)), f
    assert not lock_files(tmp_path / "shared")[1].exists()


def test_a_second_toy_build_of_the_same_model_waits_and_reuses_the_first(tmp_path, monkeypatch):
    """Two runs in different folders share the toy model cache: the second build waits for the
    first (instead of both writing one `.partial` folder), then uses its model."""
    import threading

    from filelock import FileLock

    import charter.toy.model as toy

    final = tmp_path / "model"
    monkeypatch.setattr(toy, "_build", lambda *a: pytest.fail("the model was built twice"))
    first = FileLock(tmp_path / ".model.build.lock", thread_local=False)
    first.acquire()
    got: list[Path] = []
    second = threading.Thread(target=lambda: got.append(toy.build_toy_model(toy.ToyBuildConfig(), final)))
    second.start()
    time.sleep(0.3)
    assert second.is_alive() and got == []  # waiting for the first build
    final.mkdir()
    (final / toy.BUILD_RECORD).write_text("{}")  # the first build finishes
    first.release()
    second.join(timeout=10)
    assert got == [final]
