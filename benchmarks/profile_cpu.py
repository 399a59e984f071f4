"""CPU-time profile of a `charter` command: where the toy demo's seconds go.

    python benchmarks/profile_cpu.py OUT.prof run --preset toy --run-dir runs/profile

Runs the command in this process under cProfile with a CPU-time clock (`time.process_time`,
all threads), so a machine shared with other jobs does not inflate the figures the way wall
time would. Prints each pipeline stage's cumulative CPU seconds, then the top functions.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative CPU seconds of every `stage_*` function (one per pipeline stage)."""
    out = {}
    for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name.startswith("stage_"):
            out[name] = out.get(name, 0.0) + cumulative
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU-time profile of a `charter` command (see the module docstring).")
    parser.add_argument("out", help="where to write the cProfile stats")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the charter command and its arguments")
    opts = parser.parse_args()
    out, args = opts.out, opts.command
    from charter.cli import app

    profiler = cProfile.Profile(time.process_time)
    t0 = time.process_time()
    try:
        profiler.runcall(app, args, standalone_mode=False)
    finally:
        profiler.dump_stats(out)
    stats = pstats.Stats(out)
    print(f"\nCPU seconds, whole command: {time.process_time() - t0:.1f}")
    for name, sec in stage_seconds(stats).items():
        print(f"  {name:28s} {sec:8.1f}")
    stats.sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
