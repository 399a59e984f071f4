"""Random `kill -9` across the whole toy pipeline: every finished run must equal an uninterrupted one.

Runs `charter run --preset toy` at tiny counts once without interruption (the reference). Then,
in fresh run folders ("cycles"), it starts the same command, waits until a target stage is
running, sleeps a random time within that stage's reference duration, and kills the process
with SIGKILL; then starts the same command again, aiming at the next stage, and so on through
every stage, until `--trials` kills have landed. Each cycle is finally run to the end, and then:

- its `summary.json` must equal the reference's;
- no records file may hold an id twice, and every line must parse.

It prints a Markdown table (for docs/reliability.md): each kill with the stage it landed in,
and per cycle whether the result was identical. The toy base model is built once, into the
usual cache, if it is not there yet (about 5 minutes); nothing is timed.

    python benchmarks/random_kill.py --trials 26 --out /tmp/random_kill
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["toy.prompts_per_persona=16", "eval.n_prompts=8", "reflection.samples_per_prompt=1", "interaction.free=1",
        "interaction.leading=1", "interaction.turns=2", "distill.chunk_size=4", "dpo.epochs=1", "sft.epochs=1"]


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "charter.cli", "run", "--preset", "toy", *TINY, "--run-dir", str(run_dir)]


def start(run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    with log.open("a") as f:
        return subprocess.Popen(command(run_dir), env=env, stdout=f, stderr=subprocess.STDOUT)


def stages_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}


def running(run_dir: Path) -> str:
    """The stage the manifest says is running, else "after X" (between X's end and the next start)."""
    stages = stages_of(run_dir)
    now = [name for name, rec in stages.items() if rec.get("status") == "running"]
    done = [name for name, rec in stages.items() if rec.get("status") == "done"]
    return now[-1] if now else f"after {done[-1]}" if done else "start-up"


def wait_for_lock(proc: subprocess.Popen, run_dir: Path) -> float | None:
    """When `proc` holds the run folder (its start-up is over), or None if it exited first."""
    from charter.locks import read_holder

    while proc.poll() is None:
        if (read_holder(run_dir) or {}).get("pid") == proc.pid:
            return time.time()
        time.sleep(0.005)
    return None


def wait_for_stage(proc: subprocess.Popen, run_dir: Path, stage: str, since: float) -> str:
    """"running" once `proc` has started `stage`, "done" if it is past it, "exited" if `proc` ended."""
    manifest = run_dir / "manifest.json"
    while proc.poll() is None:
        fresh = manifest.exists() and manifest.stat().st_mtime > since  # written by this process
        status = stages_of(run_dir).get(stage, {}).get("status")
        if status == "done":
            return "done"
        if fresh and status == "running":
            return "running"
        time.sleep(0.005)
    return "exited"


def kill_somewhere(run_dir: Path, log: Path, targets: list[str], seconds: dict, rng: random.Random) -> dict | None:
    """Start the run and kill it inside the first target stage it reaches; None if it finished."""
    proc = start(run_dir, log)
    since = wait_for_lock(proc, run_dir)
    while since is not None and targets:
        target = targets.pop(0)
        state = wait_for_stage(proc, run_dir, target, since)
        if state == "exited":
            break
        if state == "done":
            continue
        delay = rng.uniform(0, max(seconds.get(target, 0.0), 0.05))
        time.sleep(delay)
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"target": target, "hit": running(run_dir), "delay": round(delay, 2)}
    if proc.wait() != 0:
        raise SystemExit(f"run failed; see {log}")
    return None


def check(run_dir: Path, reference: dict) -> dict:
    from charter.data.jsonl import read_jsonl

    repeated = 0
    for f in run_dir.rglob("*.jsonl"):
        ids = [r["id"] for r in read_jsonl(f) if "id" in r]  # a torn line would raise here
        repeated += len(ids) - len(set(ids))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"identical": summary == reference, "repeated_ids": repeated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=26, help="kills to land, in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/random_kill"))
    a = ap.parse_args()
    from charter.run.stages import build_pipeline

    stages = build_pipeline().names()
    a.out.mkdir(parents=True, exist_ok=True)
    if not (a.out / "reference" / "summary.json").exists():
        start(a.out / "reference", a.out / "reference.log").wait()
    reference = json.loads((a.out / "reference" / "summary.json").read_text())
    seconds = {s: rec.get("seconds", 0.0) for s, rec in stages_of(a.out / "reference").items()}
    rng = random.Random(a.seed)
    kills: list[dict] = []
    cycles: list[dict] = []
    while len(kills) < a.trials:
        run_dir, targets = a.out / f"cycle{len(cycles)}", list(stages)
        log = a.out / f"cycle{len(cycles)}.log"
        while targets and len(kills) < a.trials:
            k = kill_somewhere(run_dir, log, targets, seconds, rng)
            if k is None:
                break
            kills.append({"cycle": len(cycles), **k})
            print(f"kill {len(kills)}: cycle {len(cycles)}, aimed at {k['target']}, landed in {k['hit']}", flush=True)
        kill_somewhere(run_dir, log, [], seconds, rng)  # run it to the end
        cycles.append({"cycle": len(cycles), **check(run_dir, reference),
                       "kills": sum(k["cycle"] == len(cycles) for k in kills),
                       "takeovers": log.read_text().count("taking over from"),
                       "torn_repaired": log.read_text().count("removed a torn last record")})
    print_table(kills, cycles, stages, a)


def print_table(kills: list[dict], cycles: list[dict], stages: list[str], a: argparse.Namespace) -> None:
    hit = Counter(k["hit"] for k in kills)
    print(f"\n{len(kills)} kills (SIGKILL) in {len(cycles)} runs; command: python benchmarks/random_kill.py "
          f"--trials {a.trials} --seed {a.seed}\n")
    print("| stage | kills landed in it |\n|---|---|")
    for s in stages + sorted(set(hit) - set(stages)):
        print(f"| {s} | {hit.get(s, 0)} |")
    print("\n| run | kills | lock takeovers | torn lines repaired | repeated ids | summary.json identical |")
    print("|---|---|---|---|---|---|")
    for c in cycles:
        print(f"| {c['cycle']} | {c['kills']} | {c['takeovers']} | {c['torn_repaired']} | {c['repeated_ids']} | "
              f"{'yes' if c['identical'] else 'NO'} |")
    if not all(c["identical"] and c["repeated_ids"] == 0 for c in cycles):
        raise SystemExit("a killed run did not end equal to the uninterrupted one")


if __name__ == "__main__":
    main()
