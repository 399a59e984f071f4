"""A real OpenAI-compatible server for tests: `transformers serve` on a local tiny model, on loopback.

`ServeProcess` starts the server in a child process on a free 127.0.0.1 port, waits for
`/health`, and can be killed (SIGKILL, like a crashed server) and restarted on the same
port. The `serve` fixture is session-scoped; tests that kill the server should make their
own `ServeProcess` so they do not disturb others. Needs fastapi + uvicorn (the `dev` extra).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, model_dir: str | Path, port: int | None = None, log_path: str | Path | None = None):
        self.model = str(model_dir)
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 90.0) -> "ServeProcess":
        import httpx

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model, "--host", "127.0.0.1",
             "--port", str(self.port), "--device", "cpu", "--log-level", "error"],
            stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode} (log: {self.log_path})")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"transformers serve did not become healthy in {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as if the server crashed; waits until the port is free."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> "ServeProcess":
        self.kill()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def serve(tiny_model_dir, tmp_path_factory):
    """A running `transformers serve` for the session's tiny model (killed at the end)."""
    s = ServeProcess(tiny_model_dir, log_path=tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield s
    s.kill()
