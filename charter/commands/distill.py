"""`charter distill CONFIG [key=value ...]`: constitution -> prompts -> teacher/student -> DPO pairs."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from charter.config import load_config
from charter.locks import hold_folder


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(config: Path = typer.Argument(..., help="DistillConfig YAML."),
                overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. samples=3 teacher.model=..."),
                out_dir: Path = typer.Option(None, "--out-dir", "-o",
                                             help="Output folder (default runs/distill-<config hash>). Re-run to resume.")) -> None:
        """Generate DPO preference pairs from a constitution (resumable)."""
        # deferred: the distill step's imports add ~0.04 s to every `charter --help`
        from charter.stages.distill import DistillConfig, format_summary, run_distill

        cfg = load_config(DistillConfig, config, overrides or [])
        out = out_dir or Path("runs") / f"distill-{cfg.hash()}"
        with hold_folder(out):
            pairs = run_distill(cfg, out, progress=True)
        typer.echo(format_summary(json.loads((out / "summary.json").read_text())))
        typer.echo(f"wrote {pairs}")
