"""Methods x seeds, compared (`charter run --preset toy-methods`, or any config with `study:` or
`--methods dpo,grpo --seeds 0,1,2`): each (method, seed) is an ordinary run in
`RUN/<method>/seed-N`, cached and resumable with one writer each (so several shells can share one
study), and the table across them goes to `RUN/methods.json`, `methods.md` and `methods.html`.

Per method, for its first trained model (stored as `dpo`, shown as the method's name) and after
introspection SFT (`<method>+sft`): adherence without the constitution, in character under the
attack kinds (pooled) and under multi-turn, well-formed and relevant replies. Each figure adds the
seeds' counts (each reply once: `n_unique` where a base reply was scored for several personas),
with a Wilson 95% interval over the distinct replies, and the per-seed values' range. The seeds
draw their held-out prompts from one partition, so a prompt can come back in another seed; its
reply there is another model's (or another sample's), so it is another reply and counts again
(`prompts` in methods.json says how many distinct prompts there were). The base and
base+constitution rows come once, from the first method's runs: every method's run of a seed has
the same base model, eval prompts and sampling seed.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence, get_args

from pydantic import ValidationError

from charter.config import ConfigError
from charter.data.jsonl import atomic_write_json, atomic_write_text, read_jsonl
from charter.evaluate import plots
from charter.evaluate.stats import proportion_of_unique
from charter.evaluate.systems import FIRST_TRAINED, display_name, is_trained
from charter.run.config import Method, RunConfig, StudySection
from charter.run.layout import RunLayout, load_manifest
from charter.report import img_html, png_base64
from charter.run.seeds import read_summaries, seed_dir, spread

ADHERENCE_BAR = 0.9  # issue #14: RL against the toy judge must reach this adherence ...
WELL_FORMED_BAR = 0.95  # ... with well-formedness at least this share of the base model's
BASELINES = ("base", "base+constitution")
PAIR_DATA_STAGES = ("teacher", "student", "pairs")  # what the pair methods generate before training

FIGURES: dict[str, Callable[[dict, str], dict | None]] = {  # figure -> a system's share in one summary.json
    "adherence": lambda m, s: (m["adherence"].get(s) or {}).get("pooled"),
    "under_attack": lambda m, s: ((m.get("suite") or {}).get("pooled") or {}).get("attacks", {}).get(s),
    "multiturn": lambda m, s: ((m.get("suite") or {}).get("pooled") or {}).get("robustness", {}).get(
        "multiturn", {}).get(s),
    "well_formed": lambda m, s: m["well_formed"].get(s),
    "relevant": lambda m, s: m["relevant"].get(s),
}
HEADINGS = {"adherence": "adherence, no constitution", "under_attack": "in character under the attack kinds",
            "multiturn": "under multi-turn", "well_formed": "well-formed", "relevant": "relevant"}


# ---------------------------------------------------------------- which runs

def parse_methods(text: str) -> list[str]:
    """"dpo,grpo" -> ["dpo", "grpo"]: distinct names of `Method`, in order."""
    known = get_args(Method)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown or not methods or len(set(methods)) != len(methods):
        why = f"unknown method {unknown[0]!r}" if unknown else "expected distinct method names"
        raise ConfigError(f"--methods {text!r}: {why} (methods: {', '.join(known)}), e.g. dpo,grpo")
    return methods


def chosen_study(cfg: RunConfig, methods: list[str] | None, seeds: list[int] | None) -> StudySection:
    """The config's `study:` section, with the command line's --methods and --seeds over it."""
    update = {k: v for k, v in (("methods", methods), ("seeds", seeds)) if v is not None}
    return cfg.study.model_copy(update=update)


def run_dir(root: Path, study: StudySection, method: str, seed: int) -> Path:
    """`RUN/<method>/seed-N` in a method study, `RUN/seed-N` with seeds alone."""
    return seed_dir(root / method if study.methods else root, seed)


def study_runs(cfg: RunConfig, study: StudySection, root: Path) -> list[tuple[RunConfig, Path]]:
    """Every (method, seed) run's own config (the study section left out) and folder, all checked
    before the first starts: a method the config cannot train fails now, in one line."""
    runs = []
    for method in study.methods or [cfg.method]:
        for seed in study.seeds or [cfg.seed]:
            try:
                one = RunConfig.model_validate({**cfg.to_dict(), "method": method, "seed": seed, "study": {}})
            except ValidationError as e:
                err = e.errors()[0]
                raise ConfigError(f"study.methods: {method}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            runs.append((one, run_dir(root, study, method, seed)))
    return runs


# ---------------------------------------------------------------- figures across runs

def pooled_share(shares: Sequence[dict | None]) -> dict[str, Any]:
    """The seeds' shares of one figure as one: counts added, the Wilson 95% interval over distinct
    replies, and the per-seed values with their mean and range."""
    known = [s for s in shares if s and s.get("n")]
    values = spread([s["value"] if s and s.get("n") else None for s in shares])
    if not known:
        return {"k": 0, "n": 0, "n_unique": 0, "value": None, "lo": 0.0, "hi": 1.0, **values}
    k, n = sum(s["k"] for s in known), sum(s["n"] for s in known)
    return {**proportion_of_unique(k, n, sum(s.get("n_unique", s["n"]) for s in known)), **values}


def meets_bar(summary: dict[str, Any], system: str) -> bool | None:
    """Adherence >= ADHERENCE_BAR and well-formed >= WELL_FORMED_BAR x the base's, in one run; None
    where a figure is missing."""
    adherence = (FIGURES["adherence"](summary, system) or {}).get("value")
    well_formed = (summary["well_formed"].get(system) or {}).get("value")
    base = (summary["well_formed"].get("base") or {}).get("value")
    if None in (adherence, well_formed, base):
        return None
    return adherence >= ADHERENCE_BAR and well_formed >= WELL_FORMED_BAR * base


def stage_seconds(run: Path, stages: Sequence[str]) -> float | None:
    """Seconds the run's manifest records for `stages` together (its own work, resumes included)."""
    recs = load_manifest(run)["stages"]
    found = [recs[s]["seconds"] for s in stages if "seconds" in recs.get(s, {})]
    return sum(found) if found else None


def system_row(summaries: dict[int, dict[str, Any]], system: str, method: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"system": system, "method": method}
    row.update({f: pooled_share([get(m, system) for m in summaries.values()]) for f, get in FIGURES.items()})
    if method is not None:
        bar = [meets_bar(m, system) for m in summaries.values()]
        row["meets_bar"] = {"per_seed": bar, "all": all(bar)}
    return row


def prompt_reuse(runs: Sequence[Path]) -> dict[str, Any]:
    """How many distinct held-out prompts each seed answered, and over all seeds together."""
    per_run = [{r["prompt"] for r in read_jsonl(RunLayout(run).replies())} for run in runs]
    union = set().union(*per_run)
    return {"per_seed": [len(p) for p in per_run], "distinct_over_seeds": len(union),
            "repeated_across_seeds": len(union) < sum(len(p) for p in per_run)}


def aggregate_methods(root: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Every run's `summary.json` and manifest -> the figures of `methods.json` (see the module doc)."""
    runs = {m: read_summaries(root / m, seeds) for m in methods}
    first = runs[methods[0]]
    systems = list(next(iter(first.values()))["systems"])
    rows = {s: system_row(first, s, None) for s in BASELINES if s in systems}
    for m in methods:
        for s in filter(is_trained, systems):
            rows[display_name(s, m)] = system_row(runs[m], s, m)
        folders = [seed_dir(root / m, k) for k in seeds]
        rows[display_name(FIRST_TRAINED, m)].update(
            train_seconds=spread([stage_seconds(f, [FIRST_TRAINED]) for f in folders]),
            pair_data_seconds=spread([stage_seconds(f, PAIR_DATA_STAGES) for f in folders]))
    return {"methods": list(methods), "seeds": list(seeds), "personas": next(iter(first.values()))["personas"],
            "bar": {"adherence": ADHERENCE_BAR, "well_formed_vs_base": WELL_FORMED_BAR},
            "prompts": prompt_reuse([seed_dir(root / methods[0], k) for k in seeds]), "systems": rows}


# ---------------------------------------------------------------- the table

def share_cell(p: dict[str, Any]) -> str:
    if p["value"] is None:
        return "n/a"
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] ({p['min']:.3f}–{p['max']:.3f})"


def table_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells, shared by methods.md and methods.html."""
    head = ["system", *HEADINGS.values(), f"meets the RL bar (seeds {', '.join(map(str, agg['seeds']))})",
            "first training stage, s (+ pair data, s)"]
    rows = []
    for label, r in agg["systems"].items():
        bar = "–" if "meets_bar" not in r else ", ".join(
            {True: "yes", False: "no", None: "n/a"}[b] for b in r["meets_bar"]["per_seed"])
        t, d = r.get("train_seconds"), r.get("pair_data_seconds")
        secs = "–" if not t or t["mean"] is None else f"{t['mean']:.0f} ({t['min']:.0f}–{t['max']:.0f})" + (
            f" + {d['mean']:.0f}" if d and d["mean"] is not None else "")
        rows.append([label, *(share_cell(r[f]) for f in HEADINGS), bar, secs])
    return head, rows


def methods_table(agg: dict[str, Any]) -> str:
    """methods.md: the table, then what its cells mean."""
    head, rows = table_rows(agg)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + notes(agg)


def notes(agg: dict[str, Any]) -> str:
    p, bar = agg["prompts"], agg["bar"]
    repeat = (f"the seeds' held-out prompts overlap ({p['distinct_over_seeds']} distinct prompts over the seeds, "
              f"{'/'.join(map(str, p['per_seed']))} per seed): a prompt met again in another seed is answered by "
              "another model or sample, so each reply counts once and the interval treats replies as independent"
              if p["repeated_across_seeds"] else "the seeds' held-out prompts are distinct")
    return (f"Each cell: the share pooled over seeds {', '.join(map(str, agg['seeds']))} (counts added, Wilson 95% "
            f"interval), then the per-seed range (min–max); personas {', '.join(agg['personas'])}; {repeat}. "
            f"`<method>` is the first trained model, `<method>+sft` the same after introspection SFT (merged). "
            f"The RL bar: adherence ≥ {bar['adherence']} and well-formed ≥ {bar['well_formed_vs_base']} × the "
            "base's, in that seed. Seconds: the first training stage's, mean (min–max) over seeds, from each "
            "run's manifest; the pair methods also spend the teacher, student and pairs stages' (after +).")


# ---------------------------------------------------------------- the page

def methods_plots(agg: dict[str, Any], folder: Path) -> dict[str, str | None]:
    """Two charts, each figure x system with Wilson 95% bars: the first trained models, and after
    SFT; the base and base+constitution rows in both, for reference."""
    rows = agg["systems"]
    out = {}
    for key, title in (("first", "first training stage"), ("sft", "after introspection SFT")):
        chosen = [label for label, r in rows.items()
                  if r["method"] is None or (r["system"] == FIRST_TRAINED) == (key == "first")]
        rates = {HEADINGS[f]: {label: rows[label][f] for label in chosen if rows[label][f]["n"]} for f in HEADINGS}
        path = plots.plot_robustness_matrix(rates, folder / f"methods_{key}.png", f"Methods, {title}: pooled over "
                                            "seeds (Wilson 95% CI)", "share")
        out[key] = png_base64(path)
    return out


def methods_html(agg: dict[str, Any], images: dict[str, str | None]) -> str:
    e = html.escape
    head, rows = table_rows(agg)
    table = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr><th>" + e(r[0]) + "</th>" + "".join(f"<td>{e(c)}</td>" for c in r[1:]) + "</tr>" for r in rows)
    links = "".join(f'<li><a href="{e(m)}/seed-{k}/report.html">{e(m)}, seed {k}</a></li>'
                    for m in agg["methods"] for k in agg["seeds"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Charter method comparison</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>Method comparison: {e(', '.join(agg['methods']))} over seeds {e(', '.join(map(str, agg['seeds'])))}</h1>
<table>{table}</table>
<p>{e(notes(agg))}</p>
{img_html(images.get('first'), 'methods, first training stage')}
{img_html(images.get('sft'), 'methods, after introspection SFT')}
<h2>Each run's report</h2><ul>{links}</ul>
</body></html>
"""


def write_study(root: Path, agg: dict[str, Any]) -> str:
    """methods.json, methods.md and methods.html at the study's top; returns the Markdown table."""
    table = methods_table(agg)
    with tempfile.TemporaryDirectory() as tmp:
        images = methods_plots(agg, Path(tmp))
    atomic_write_json(root / "methods.json", agg)
    atomic_write_text(root / "methods.md", table + "\n")
    atomic_write_text(root / "methods.html", methods_html(agg, images))
    return table
