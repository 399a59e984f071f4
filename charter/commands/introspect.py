"""`charter introspect CONFIG [key=value ...]`: self-reflection + self-interaction -> filtered SFT JSONL."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from charter.config import load_config
from charter.locks import hold_folder


def register(app: typer.Typer) -> None:
    @app.command("introspect")
    def introspect(config: str = typer.Argument(..., help="YAML config (IntrospectConfig fields)"),
                   overrides: Optional[List[str]] = typer.Argument(
                       None, help="key=value overrides, e.g. reflection.samples_per_prompt=50 interaction.turns=6"),
                   out_dir: Path = typer.Option(Path("runs/introspect"), "--out-dir", "-o",
                                                help="Output folder; re-running with the same folder resumes.")):
        """Generate introspection data with the DPO model, filter it, and write the SFT set.

        Prints the filter pass-rate table and the path of the SFT JSONL.
        """
        # deferred: the introspection step's imports add ~0.12 s to every `charter --help`
        from charter.stages.introspect import IntrospectConfig, run_introspect

        cfg = load_config(IntrospectConfig, config, overrides or [])
        with hold_folder(out_dir):
            path = run_introspect(cfg, out_dir)
        typer.echo((out_dir / "filter_report.md").read_text())
        typer.echo(str(path))
