"""`charter merge` command."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Not built yet."""
