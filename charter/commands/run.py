"""`charter run CONFIG|--preset NAME [key=value ...] [--methods dpo,grpo] [--seeds 0,1,2]`: the whole
pipeline, cached and resumable; with seeds and methods (the flags, or the config's `study:`), once
per method and seed and the figures across them."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from charter.config import ConfigError
from charter.data.jsonl import atomic_write_json, atomic_write_text
from charter.faults import RunError
from charter.locks import FolderInUse, hold_folder


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
        methods: Optional[str] = typer.Option(None, "--methods",
                                              help="e.g. dpo,sdft,grpo: one run per method (and seed) in "
                                                   "RUN_DIR/<method>/seed-N, then RUN_DIR/methods.json, .md, .html"),
        dry_run: bool = typer.Option(False, "--dry-run",
                                     help="check every model resolves (config + tokenizer), print the plan")) -> None:
    """Run constitution -> prompts -> pairs -> DPO -> introspection -> SFT -> merge -> eval -> report."""
    # deferred: the run package imports torch and transformers, and `charter --help` must stay fast
    from charter.run.config import load_run_config

    from charter.run.seeds import parse_seeds
    from charter.run.study import chosen_study, parse_methods, study_runs

    path, overrides = split_args(args or [])
    cfg = load_run_config(path, preset, overrides)
    root = Path(run_dir or f"runs/{cfg.name}")
    study = chosen_study(cfg, parse_methods(methods) if methods else None, parse_seeds(seeds) if seeds else None)
    if not study.methods and not study.seeds:
        run_one(cfg, root, start, only, dry_run)
        return
    busy = []
    for one, out in study_runs(cfg, study, root):
        try:
            run_one(one, out, start, only, dry_run)
        except FolderInUse as e:  # another shell runs it: do the others, aggregate when all have finished
            typer.secho(f"skipping {out}: {e}", fg="yellow", err=True)
            busy.append(out)
    if dry_run:
        return
    if busy:
        raise RunError(f"{len(busy)} of the study's runs are in use by other processes ({', '.join(map(str, busy))}); "
                       "the rest are done: run the same command again when they finish, to aggregate")
    seeds_used = study.seeds or [cfg.seed]
    for method in study.methods or [None]:
        write_seeds(root / method if method else root, seeds_used)
    if study.methods:
        from charter.run.study import aggregate_methods, write_study

        table = write_study(root, aggregate_methods(root, study.methods, seeds_used))
        typer.echo(f"\nmethods x seeds {', '.join(map(str, seeds_used))}\n{table}\n\n{root / 'methods.html'}")


def write_seeds(root: Path, seeds: list[int]) -> None:
    """seeds.json and seeds.md for the runs in `root`/seed-N: the figures across seeds."""
    from charter.run.seeds import aggregate, read_summaries, seeds_table

    agg = aggregate(read_summaries(root, seeds))
    table = seeds_table(agg)
    atomic_write_json(root / "seeds.json", agg)
    atomic_write_text(root / "seeds.md", table + "\n")
    typer.echo(f"\nacross seeds {', '.join(map(str, seeds))}: mean (min–max)\n{table}\n\n{root / 'seeds.json'}")


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
        typer.echo(f"run {cfg.name} -> {out}  (method {cfg.method}, seed {cfg.seed}, student {cfg.student.kind}:{cfg.student.model})")
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
