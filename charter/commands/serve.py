"""`charter serve RUN|MODEL`: the trained model as an OpenAI-compatible endpoint, through `transformers serve`.

Charter writes no server of its own: it picks the model as `charter chat` does (in a run directory,
the latest finished stage, or `--stage`/`--persona`) and runs `transformers serve` with that model
pinned (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, streaming included); requests
name it by the id `/v1/models` lists (its path). Needs `pip install -e ".[serve]"` (transformers' serving extra).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import typer

SERVING_PACKAGES = ("fastapi", "uvicorn")


def serve_command(model: str, host: str, port: int, device: str, dtype: str) -> list[str]:
    """The `transformers serve` command line for one preloaded model."""
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--host", host,
            "--port", str(port), "--device", device, "--dtype", dtype]


def serve(target: str = typer.Argument(..., help="a run directory or a model path/id"),
          stage: Optional[str] = typer.Option(None, "--stage", help="in a run dir: base, dpo, sft or merge"),
          persona: Optional[str] = typer.Option(None, "--persona", help="in a run dir: which constitution"),
          host: str = typer.Option("127.0.0.1", "--host", help="listen address (0.0.0.0 for other machines)"),
          port: int = typer.Option(8000, "--port"),
          device: str = typer.Option("auto", "--device", help="auto, cpu, cuda:0, ..."),
          dtype: str = typer.Option("auto", "--dtype")) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (`transformers serve`); Ctrl-C stops it."""
    from charter.commands.chat import resolve_model
    from charter.config import ConfigError
    from charter.models import check_model

    missing = [p for p in SERVING_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"charter serve needs {', '.join(missing)}: pip install -e \".[serve]\"")
    path = resolve_model(target, stage, persona)
    check_model(path)  # a missing folder or uncached Hub id: one line naming it, before the server starts
    typer.echo(f"serving {path} at http://{host}:{port}/v1 (OpenAI-compatible; requests name it as model={path!r}, "
               "as /v1/models lists it)", err=True)
    sys.stderr.flush()
    command = serve_command(path, host, port, device, dtype)
    os.execv(command[0], command)  # the server replaces this process: signals reach it directly


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
