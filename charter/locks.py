"""One writer per output folder.

Two processes resuming one run folder at once each take the other's live records for an
interrupted run, append the same records twice and double every count. So every command
that writes a folder holds `.NAME.charter.lock` beside it while it writes: an OS lock
(`filelock`), which the kernel releases when its process dies, even by `kill -9`. Next to it
the holder keeps `.NAME.charter.lock.json` (pid, host, start time, command, heartbeat), so a
second process can say who holds the folder, and a takeover after a crash is reported. Both
live beside the folder, not in it, so commands that replace their output folder as a whole
(merge, the toy build) are covered too, and a folder's contents and hashes never include them.
The rules:

- the OS lock is held: refuse at once (`FolderInUse`), naming the holder's pid, host and start;
- the OS lock is free but a record is left: its writer is gone (this host), or its heartbeat
  is older than `STALE_AFTER_S` (another host): take the folder over and say so;
- a record from another host with a fresh heartbeat: refuse, since OS locks are not shared
  between hosts on every network filesystem (NFS mounted with `nolock`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from charter.data.jsonl import atomic_write_json
from charter.faults import RunError, command_line

HEARTBEAT_S = 30.0  # how often the holder refreshes its record
STALE_AFTER_S = 300.0  # a record from another host older than this is a dead holder's


class FolderInUse(RunError):
    """Another live process writes this folder."""


def lock_files(folder: str | Path) -> tuple[Path, Path]:
    """The OS lock and the holder record of `folder`: hidden files beside it."""
    folder = Path(folder).resolve()
    return (folder.parent / f".{folder.name}.charter.lock", folder.parent / f".{folder.name}.charter.lock.json")


def read_holder(folder: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock_files(folder)[1].read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (it left no holder record)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')} "
            f"({holder.get('command')})")


def _in_use(folder: Path, holder: dict[str, Any] | None) -> FolderInUse:
    return FolderInUse(f"{folder}: in use by {describe(holder)}; wait for it to finish or stop it, then re-run")


def _wait_for_holder(folder: Path, seconds: float = 2.0) -> dict[str, Any] | None:
    """The holder writes its record just after taking the lock: give it a moment."""
    deadline = time.monotonic() + seconds
    while (holder := read_holder(folder)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _check_left_record(folder: Path, holder: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """We hold the OS lock; a record still there was left by a writer that did not finish."""
    if holder is None or (holder.get("pid"), holder.get("host")) == (os.getpid(), socket.gethostname()):
        return
    if holder.get("host") == socket.gethostname():
        log(f"{folder}: taking over from {describe(holder)}: that process is gone")
        return
    age = time.time() - float(holder.get("heartbeat", 0))
    if age < STALE_AFTER_S:
        raise _in_use(folder, holder)
    log(f"{folder}: taking over from {describe(holder)}: no heartbeat for {age:.0f}s")


def _write_holder(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_json(lock_files(folder)[1], {**record, "heartbeat": time.time()})


@contextmanager
def _heartbeat(folder: Path) -> Iterator[None]:
    """Keep the holder record fresh while the block runs; remove it after."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_holder(folder, record)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                _write_holder(folder, record)
            except OSError:  # a full disk must not kill the run from this thread
                pass

    thread = threading.Thread(target=beat, name="charter-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        lock_files(folder)[1].unlink(missing_ok=True)


@contextmanager
def hold_folder(folder: str | Path, log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Be the only writer of `folder` for the block, else raise `FolderInUse`. The folder itself
    is neither created nor touched; its parent is created."""
    from filelock import FileLock, Timeout  # deferred: start-up (`charter --help` imports this module)

    folder = Path(folder)
    lock_path = lock_files(folder)[0]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    lock = FileLock(lock_path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _in_use(folder, _wait_for_holder(folder)) from None
    try:
        _check_left_record(folder, read_holder(folder), log)
        with _heartbeat(folder):
            yield folder
    finally:
        lock.release()
