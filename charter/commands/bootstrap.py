"""`charter bootstrap CONFIG`: staged instruction-following training of a base model."""
from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def bootstrap(config: Optional[str] = typer.Argument(None, help="YAML config (BootstrapConfig fields); "
                                                                    "omit to use the defaults"),
                  overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. "
                                                                             "stages=[instructions,questions]")) -> None:
        """Base model -> explicit instructions -> questions -> ... -> constitutional, SFT->DPO per stage.

        Every stage is evaluated with verifiable checks and compared with the one before
        (Wilson CI, McNemar). Re-running resumes after the last finished stage.
        """
        from charter.cai.bootstrap import BootstrapConfig, run_bootstrap, summary_table
        from charter.config import load_config
        from charter.locks import hold_folder

        args = list(overrides or [])
        if config and "=" in config:  # only overrides were given
            args, config = [config] + args, None
        cfg = load_config(BootstrapConfig, config, args)
        with hold_folder(cfg.out_dir):
            summary = run_bootstrap(cfg)
        typer.echo(summary_table(summary["rows"]))
        typer.echo(f"out: {cfg.out_dir}  (summary.json, summary.md, stage_*/eval.json)")
