"""One run over several seeds (`charter run --seeds 0,1,2`): each seed's run in `<run dir>/seed-N`,
and the headline figures across seeds, mean and spread (min-max), in `<run dir>/seeds.json`.

The figures come from each seed's `summary.json`: adherence without the constitution (pooled over
personas), in character under the attack kinds and under the multi-turn attack (the eval stage's
suite), and the paired test of DPO+SFT against DPO under attack, per seed and pooled over seeds
(the seeds' attacked prompts are distinct items, so their discordant counts add up).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from charter.config import ConfigError
from charter.evaluate.stats import mcnemar, paired_bootstrap
from charter.evaluate.systems import display_name


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]: distinct integers, in order."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct comma-separated integers, e.g. 0,1,2")
    return seeds


def seed_dir(root: Path, seed: int) -> Path:
    return root / f"seed-{seed}"


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and range of the seeds' values (None where a seed has no figure)."""
    known = [v for v in values if v is not None]
    if not known:
        return {"per_seed": list(values), "mean": None, "min": None, "max": None}
    return {"per_seed": list(values), "mean": sum(known) / len(known), "min": min(known), "max": max(known)}


def items_of(test: dict[str, Any]) -> tuple[list[bool], list[bool]]:
    """The paired items behind a test's counts (both kept, only before, only after, neither): enough
    to resample them, since a paired bootstrap sees only which of the four kinds each item is."""
    n, b, c = test["n"], test["b"], test["c"]
    both = round(test["rate_before"] * n) - b
    kinds = [(True, True)] * both + [(True, False)] * b + [(False, True)] * c
    kinds += [(False, False)] * (n - len(kinds))
    return [x for x, _ in kinds], [y for _, y in kinds]


def pooled_paired(tests: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The seeds' paired tests as one: discordant counts added, exact McNemar, bootstrap CI of the difference."""
    if not tests:
        return None
    before = [x for t in tests for x in items_of(t)[0]]
    after = [y for t in tests for y in items_of(t)[1]]
    return {"before": tests[0]["before"], "after": tests[0]["after"], "n": len(before),
            "rate_before": sum(before) / len(before), "rate_after": sum(after) / len(after),
            **mcnemar(sum(t["b"] for t in tests), sum(t["c"] for t in tests)).to_dict(),
            "difference": paired_bootstrap(before, after).to_dict()}


def aggregate(summaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """seed -> its `summary.json` -> the across-seed figures of `seeds.json`."""
    seeds = list(summaries)
    systems = list(dict.fromkeys(s for m in summaries.values() for s in m["systems"]))
    suites = {k: m.get("suite") or {} for k, m in summaries.items()}

    def across(get) -> dict[str, dict[str, Any]]:
        return {s: spread([get(k, s) for k in seeds]) for s in systems}

    def suite_value(k: int, s: str, *path: str) -> float | None:
        node: Any = suites[k]
        for key in path:
            node = (node or {}).get(key)
        return ((node or {}).get(s) or {}).get("value")

    tests = [suites[k]["paired"]["pooled"] for k in seeds if (suites[k].get("paired") or {}).get("pooled")]
    return {"seeds": seeds, "systems": systems, "method": next(iter(summaries.values())).get("method"),
            "adherence": across(lambda k, s: summaries[k]["adherence"][s]["pooled"]["value"]
                                if s in summaries[k]["adherence"] else None),
            "under_attack": across(lambda k, s: suite_value(k, s, "pooled", "attacks")),
            "multiturn": across(lambda k, s: suite_value(k, s, "pooled", "robustness", "multiturn")),
            "paired_under_attack": {"per_seed": tests, "difference": spread([t["difference"]["diff"] for t in tests]),
                                    "pooled": pooled_paired(tests)}}


def _cell(x: dict[str, Any]) -> str:
    return "n/a" if x["mean"] is None else f"{x['mean']:.3f} ({x['min']:.3f}–{x['max']:.3f})"


def seeds_table(agg: dict[str, Any]) -> str:
    """The Markdown table of `seeds.json` (what the README shows), and the paired test in one line."""
    n = len(agg["seeds"])

    def name(system: str) -> str:
        return display_name(system, agg.get("method"))

    lines = ["| system | adherence, no attack | in character under the attack kinds | under multi-turn |",
             "|---|---|---|---|"]
    lines += [f"| {name(s)} | {_cell(agg['adherence'][s])} | {_cell(agg['under_attack'][s])} | {_cell(agg['multiturn'][s])} |"
              for s in agg["systems"]]
    p = agg["paired_under_attack"]
    t = p["pooled"]
    if t:
        d = t["difference"]
        lines.append(
            f"\n{name(t['after'])} − {name(t['before'])} under attack, paired on the same prompts: "
            f"{_cell(p['difference'])} over {n} seeds (mean (min–max)); pooled over seeds {d['diff']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}] (paired bootstrap 95%), n = {t['n']}, b = {t['b']}, c = {t['c']}, "
            f"exact McNemar p = {t['p_exact']:.3g}.")
    return "\n".join(lines)


def read_summaries(root: Path, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
    out = {}
    for k in seeds:
        path = seed_dir(root, k) / "summary.json"
        if not path.exists():
            raise ConfigError(f"{path}: missing (the run for seed {k} did not finish)")
        out[k] = json.loads(path.read_text())
    return out
