"""`charter run CONFIG|--preset NAME [key=value ...] [--seeds 0,1,2]`: the whole pipeline, cached and
resumable; with `--seeds`, once per seed and the figures across seeds."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from charter.config import ConfigError
from charter.data.jsonl import atomic_write_json, atomic_write_text
from charter.locks import hold_folder


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are key=value overrides."""
    path = None
    overrides = []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif path is None:
            path = a
        else:
            raise ConfigError(f"unexpected argument {a!r}: give one CONFIG file, then key=value overrides")
    return path, overrides


def run(args: Optional[list[str]] = typer.Argument(None, help="CONFIG file and/or key=value overrides"),
        preset: Optional[str] = typer.Option(None, "--preset", help="toy (default with no config), quick, paper"),
        run_dir: Optional[str] = typer.Option(None, "--run-dir", help="default: runs/<name>"),
        start: Optional[str] = typer.Option(None, "--from", help="re-run from this stage on"),
        only: Optional[str] = typer.Option(None, "--only", help="run just this stage"),
        seeds: Optional[str] = typer.Option(None, "--seeds",
                                            help="e.g. 0,1,2: one run per seed in RUN_DIR/seed-N, then the "
                                                 "figures across seeds (mean, min-max) in RUN_DIR/seeds.json"),
        dry_run: bool = typer.Option(False, "--dry-run",
                                     help="check every model resolves (config + tokenizer), print the plan")) -> None:
    """Run constitution -> prompts -> pairs -> DPO -> introspection -> SFT -> merge -> eval -> report."""
    # deferred: the run package imports torch and transformers, and `charter --help` must stay fast
    from charter.run.config import load_run_config

    path, overrides = split_args(args or [])
    if seeds is None:
        cfg = load_run_config(path, preset, overrides)
        run_one(cfg, Path(run_dir or f"runs/{cfg.name}"), start, only, dry_run)
        return
    from charter.run.seeds import aggregate, parse_seeds, read_summaries, seed_dir, seeds_table

    chosen = parse_seeds(seeds)
    root = Path(run_dir or f"runs/{load_run_config(path, preset, overrides).name}")
    for k in chosen:
        run_one(load_run_config(path, preset, [*overrides, f"seed={k}"]), seed_dir(root, k), start, only, dry_run)
    if dry_run:
        return
    agg = aggregate(read_summaries(root, chosen))
    table = seeds_table(agg)
    atomic_write_json(root / "seeds.json", agg)
    atomic_write_text(root / "seeds.md", table + "\n")
    typer.echo(f"\nacross seeds {', '.join(map(str, chosen))}: mean (min–max)\n{table}\n\n{root / 'seeds.json'}")


def run_one(cfg, out: Path, start: str | None, only: str | None, dry_run: bool) -> None:
    """One run of the pipeline into `out`, and its table."""
    from charter.run.engine import format_plan
    from charter.run.personas import Run
    from charter.run.stages import build_pipeline, preflight

    run_inputs = Run.of(cfg)  # every constitution parsed once, here
    preflight(run_inputs, dry_run)
    pipe = build_pipeline(cfg.method, cfg.trains_reward_model)
    with nullcontext() if dry_run else hold_folder(out):  # one writer per run folder
        plan = pipe.plan(run_inputs, out, cfg.seed, start, only)
        typer.echo(f"run {cfg.name} -> {out}  (seed {cfg.seed}, student {cfg.student.kind}:{cfg.student.model})")
        typer.echo(format_plan(plan))
        if dry_run:
            return
        manifest = pipe.run(run_inputs, out, cfg.seed, start, only)
    summary = out / "summary.json"
    if summary.exists():
        from charter.report import format_table

        typer.echo("\n" + format_table(json.loads(summary.read_text())))
        typer.echo(f"\nreport: {out / 'report.html'}  ({manifest['seconds_total']:.0f}s this invocation)")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
