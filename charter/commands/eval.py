"""`charter eval CONFIG [key=value ...]`: adherence, robustness, preferences, coherence, capability."""
from __future__ import annotations

from typing import List, Optional

import typer

from charter.config import load_config


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(config: str = typer.Argument(..., help="YAML config (EvalConfig fields)"),
                 overrides: Optional[List[str]] = typer.Argument(
                     None, help="key=value overrides, e.g. n_prompts=20 persona=warm")):
        """Evaluate systems without the constitution; writes eval.json (figures with CI and n) and PNGs."""
        # deferred: the evaluation runner's imports add ~0.04 s to every `charter --help`
        from charter.evaluate.runner import EvalConfig, run_eval, summary_lines
        from charter.locks import hold_folder
        from charter.toy.world import TOY_WORLD

        cfg = load_config(EvalConfig, config, overrides or [])
        with hold_folder(cfg.out_dir):
            result = run_eval(cfg, TOY_WORLD)
        for line in summary_lines(result):
            typer.echo(line)
        typer.echo(f"wrote {cfg.out_dir}/eval.json")
