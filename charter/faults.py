"""Faults a long run meets, turned into one line the user can act on.

A stopped run must say how to go on: SIGTERM (a scheduler's pre-emption, `kill`) is raised as
`Terminated`, a `KeyboardInterrupt`, so it unwinds exactly like Ctrl-C. Records already
appended stay (each is one whole line), atomic writes in flight are dropped, the folder lock
is released, and the CLI prints the command that resumes. The chunk in flight is discarded:
a re-run regenerates it with the same seed, so the result equals an uninterrupted run.
"""
from __future__ import annotations

import errno
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class RunError(RuntimeError):
    """A failure outside the user's input that stops a command (folder in use, disk full, server
    gone): the CLI prints its message as one line, with no traceback."""


class DiskFull(RunError):
    """No space left (or over quota) while writing; the write was rolled back."""


def disk_full(path: object, e: OSError) -> DiskFull | None:
    """`e` as a one-line `DiskFull` naming `path` when the disk is full or over quota, else None."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return DiskFull(f"{str(path) + ': ' if path else ''}{what} while writing; nothing half-written was kept. "
                    f"Free space, then re-run to resume: {command_line()}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the process was, so it unwinds like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def command_line() -> str:
    """The command this process runs, as the user would type it again (`charter ...`)."""
    return shlex.join(["charter", *sys.argv[1:]])


def end_progress_bars() -> None:
    """Close progress bars a failure left open, so the error that follows starts its own line."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def interrupted_exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process killed by that signal."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (the previous handlers come back
    after). Outside the main thread, where Python cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {s: signal.signal(s, _raise_terminated) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
