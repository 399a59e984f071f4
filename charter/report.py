"""The run report: `summary.json` (every figure with its n and CI) and a self-contained `report.html`.

It reads only files the pipeline wrote, so it can be rebuilt at any time:
- `dpo/<persona>/**/metrics.jsonl`, `sft/<persona>/**/metrics.jsonl`: training curves;
- `filter/<persona>/pass_rates.json`: `{filter: {"checked": n, "passed": k}}`;
- `eval/replies.jsonl`: one row per scored reply, `{persona, system, prompt, reply, label,
  well_formed, relevant}`, where `label` is the persona the scorer saw ("neutral", or None
  when it could not decide; an undecided reply counts as not in character).

Adherence for a system is the share of its replies, *without the constitution in the prompt*,
labelled with the persona being trained; "base+constitution" is the same base model with the
constitution in the system prompt, the ceiling the training tries to reach without it.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from charter.data.jsonl import atomic_write_json, atomic_write_text, read_jsonl, warn
from charter.evaluate.stats import mcnemar_paired, wilson_ci

SYSTEMS = ["base", "base+constitution", "dpo", "dpo+sft"]
CURVE_KEYS = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"]
N_SAMPLES = 2  # sample replies shown per system and persona


# ---------------------------------------------------------------- figures

def _prop(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_ci(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci": [round(lo, 4), round(hi, 4)]}


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled adherence over personas. Where personas share a system's replies (the base model
    answers the same prompts once for all of them), the interval counts each reply once: n for the
    Wilson interval is the number of distinct generations (`n_unique`), not of scored rows."""
    k, n = sum(r["label"] == r["persona"] for r in rows), len(rows)
    shared = {r["generation"] for r in rows if r.get("generation")}
    unique = len(shared) + sum(1 for r in rows if not r.get("generation"))
    lo, hi = wilson_ci(k / n * unique, unique) if n else (0.0, 1.0)
    return {"k": k, "n": n, "n_unique": unique, "rate": k / n if n else None, "ci": [round(lo, 4), round(hi, 4)]}


def unique_replies(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Each (persona, system, prompt) reply once, the first stored, whatever the file holds (two
    writers, a prompt repeated in the eval file): a reply counted twice would narrow every interval."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault((r["persona"], r["system"], r["prompt"]), r)
    return list(seen.values()), len(rows) - len(seen)


def paired_test(rows: list[dict[str, Any]], before: str, after: str) -> dict[str, Any] | None:
    """McNemar on the same (persona, prompt) answered by two systems: did `after` keep the
    character where `before` lost it more often than the reverse?"""
    def in_character(system: str) -> dict[tuple[str, str], bool]:
        return {(r["persona"], r["prompt"]): r["label"] == r["persona"] for r in rows if r["system"] == system}

    a, b = in_character(before), in_character(after)
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    result = mcnemar_paired([a[k] for k in shared], [b[k] for k in shared]).to_dict()
    return {"before": before, "after": after, "n": len(shared), "rate_before": sum(a[k] for k in shared) / len(shared),
            "rate_after": sum(b[k] for k in shared) / len(shared), **result}


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


def training_curves(run_dir: Path, stage: str) -> dict[str, list[dict[str, Any]]]:
    """persona -> metric rows of that persona's `stage` training run (rows with a `step`)."""
    out = {}
    root = run_dir / stage
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        files = sorted(d.rglob("metrics.jsonl"))
        if files:
            rows = [r for r in _metric_rows(files[0]) if "step" in r and "loss" in r]
            out[d.name] = rows
    return out


def filter_rates(run_dir: Path) -> dict[str, dict[str, Any]]:
    """filter -> pooled pass rate over personas, with its Wilson CI."""
    totals: dict[str, list[int]] = {}
    root = run_dir / "filter"
    for f in sorted(root.glob("*/pass_rates.json")) if root.exists() else []:
        for name, c in json.loads(f.read_text()).items():
            t = totals.setdefault(name, [0, 0])
            t[0] += int(c["passed"])
            t[1] += int(c["checked"])
    return {name: _prop(k, n) for name, (k, n) in totals.items()}


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """All report figures as plain JSON (what `summary.json` holds). No timings: the same seed and
    config give the same summary, whether the run was interrupted or not (timings are in the manifest)."""
    run_dir = Path(run_dir)
    rows, repeats = unique_replies(read_jsonl(run_dir / "eval" / "replies.jsonl"))
    if repeats:
        warn(f"{run_dir / 'eval' / 'replies.jsonl'}: {repeats} repeated (persona, system, prompt) replies "
             "counted once")
    personas = sorted({r["persona"] for r in rows})
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    systems += sorted({r["system"] for r in rows} - set(systems))
    summary: dict[str, Any] = {"personas": personas, "systems": systems,
                               "adherence": {}, "well_formed": {}, "relevant": {}, "undecided": {}}
    for s in systems:
        mine = [r for r in rows if r["system"] == s]
        per = {}
        for p in personas:
            rp = [r for r in mine if r["persona"] == p]
            per[p] = _prop(sum(r["label"] == p for r in rp), len(rp))
        rates = [v["rate"] for v in per.values() if v["rate"] is not None]
        summary["adherence"][s] = {"mean": sum(rates) / len(rates) if rates else None,
                                   "pooled": _pooled(mine),
                                   "per_persona": per}
        for key in ("well_formed", "relevant"):
            checked = [r for r in mine if r.get(key) is not None]
            summary[key][s] = _prop(sum(bool(r[key]) for r in checked), len(checked))
        summary["undecided"][s] = sum(r["label"] is None for r in mine)
    summary["repeated_replies_dropped"] = repeats
    summary["paired"] = {"dpo+sft vs dpo": paired_test(rows, "dpo", "dpo+sft")}
    heldout = run_dir / "eval" / "heldout.json"
    summary["heldout"] = json.loads(heldout.read_text()) if heldout.exists() else None
    classifier = run_dir / "eval" / "classifier" / "metrics.json"  # judge.kind=classifier: its held-out accuracy
    summary["classifier"] = json.loads(classifier.read_text()) if classifier.exists() else None
    summary["filter_pass_rates"] = filter_rates(run_dir)
    summary["training"] = {}
    for stage in ("dpo", "sft"):
        curves = training_curves(run_dir, stage)
        summary["training"][stage] = {p: {k: v for k, v in rows[-1].items()
                                          if isinstance(v, (int, float)) and not k.endswith("_per_s")}
                                      for p, rows in curves.items() if rows}
    summary["samples"] = _samples(rows, systems, personas)
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        summary["seed"] = m.get("seed")
        summary["config_hash"] = m.get("config_hash")
    return summary


def _samples(rows: list[dict], systems: list[str], personas: list[str]) -> dict[str, list[dict]]:
    """The first few replies per (system, persona): eval order is fixed, so reports are comparable."""
    keep = ("persona", "prompt", "reply", "label", "well_formed", "relevant")
    return {s: [{k: r.get(k) for k in keep}
                for p in personas for r in [r for r in rows if r["system"] == s and r["persona"] == p][:N_SAMPLES]]
            for s in systems}


# ---------------------------------------------------------------- plots

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_curves(curves: dict[str, list[dict]], title: str) -> str | None:
    keys = [k for k in CURVE_KEYS if any(k in r for rows in curves.values() for r in rows)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for persona, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=persona)
        ax.set_title(f"{title}: {key}")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def plot_bars(groups: dict[str, dict[str, Any]], title: str, ylabel: str) -> str | None:
    """Bars with Wilson-CI error bars; `groups` maps label -> `_prop` dict."""
    items = [(k, v) for k, v in groups.items() if v and v.get("n")]
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(items)), 3))
    rates = [v["rate"] for _, v in items]
    err = [[r - v["ci"][0] for r, (_, v) in zip(rates, items)], [v["ci"][1] - r for r, (_, v) in zip(rates, items)]]
    ax.bar(range(len(items)), rates, yerr=err, capsize=4, color="#4a7ab7")
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


# ---------------------------------------------------------------- html

def _fmt(p: dict[str, Any] | None) -> str:
    if not p or p.get("rate") is None:
        return "n/a"
    unique = f", {p['n_unique']} distinct replies" if p.get("n_unique", p["n"]) != p["n"] else ""
    return f"{p['rate']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] (n={p['n']}{unique})"


def _paired_line(summary: dict[str, Any]) -> str:
    t = (summary.get("paired") or {}).get("dpo+sft vs dpo")
    if not t:
        return ""
    return (f"<p>Paired on the same prompts (McNemar, exact): DPO {t['rate_before']:.3f} → DPO+SFT "
            f"{t['rate_after']:.3f}, n={t['n']}; kept by DPO only {t['b']}, by DPO+SFT only {t['c']}, "
            f"p={t['p_exact']:.3g}.</p>")


def _classifier_line(summary: dict[str, Any]) -> str:
    m = summary.get("classifier")
    if not m:
        return ""
    return (f"<p>Judge: a classifier trained on teacher vs student answers to training prompts; held-out "
            f"accuracy {m['accuracy']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}], macro-F1 {m['macro_f1']:.3f}, "
            f"n={m['n']} (trained on {m['train_n']}).</p>")


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else \
        f"<p><em>{html.escape(alt)}: no data</em></p>"


def render_html(summary: dict[str, Any], plots: dict[str, str | None]) -> str:
    e = html.escape
    systems = summary["systems"]
    head = "".join(f"<th>{e(p)}</th>" for p in summary["personas"])
    rows = []
    for s in systems:
        a = summary["adherence"][s]
        cells = "".join(f"<td>{_fmt(a['per_persona'][p])}</td>" for p in summary["personas"])
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.3f}"
        rows.append(f"<tr><th>{e(s)}</th><td><b>{mean}</b></td><td>{_fmt(a['pooled'])}</td>{cells}<td>{_fmt(summary['well_formed'][s])}</td>"
                    f"<td>{_fmt(summary['relevant'][s])}</td><td>{summary['undecided'][s]}</td></tr>")
    filt = "".join(f"<tr><th>{e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in summary["filter_pass_rates"].items())
    samples = []
    for s in systems:
        items = "".join(
            f"<li><b>[{e(str(r['persona']))} → scored {e(str(r['label']))}]</b> <i>{e(r['prompt'])}</i>"
            f"<pre>{e(r['reply'])}</pre></li>" for r in summary["samples"].get(s, []))
        samples.append(f"<h3>{e(s)}</h3><ul>{items}</ul>")
    train = "".join(
        f"<tr><th>{e(stage)}/{e(p)}</th><td>{e(', '.join(f'{k}={v:.4g}' for k, v in last.items()))}</td></tr>"
        for stage, per in summary["training"].items() for p, last in per.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Charter run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}img{{max-width:100%}}</style></head><body>
<h1>Charter run report</h1>
<p>Seed {e(str(summary.get('seed')))}, config {e(str(summary.get('config_hash')))}.
Adherence = share of replies in the trained persona <b>without the constitution in the prompt</b>
(base+constitution is the ceiling: the base model with the constitution as system prompt).
Brackets are Wilson 95% intervals; where personas share one system's replies (base), the interval
counts each distinct reply once.</p>
<h2>Adherence, well-formedness, topic relevance</h2>
<table><tr><th>system</th><th>mean adherence</th><th>pooled</th>{head}<th>well-formed</th><th>relevant</th><th>undecided</th></tr>
{''.join(rows)}</table>
{_classifier_line(summary)}
{_paired_line(summary)}
{_img(plots.get('adherence'), 'adherence by system')}
{_img(plots.get('well_formed'), 'well-formedness by system')}
{_img(plots.get('relevant'), 'topic relevance by system')}
<h2>Training curves</h2>
{_img(plots.get('dpo'), 'DPO curves')}
{_img(plots.get('sft'), 'SFT curves')}
<table>{train}</table>
<h2>Filter pass rates (introspection data)</h2>
<table>{filt}</table>
{_img(plots.get('filters'), 'filter pass rates')}
<h2>Sample replies (no constitution in the prompt, except base+constitution)</h2>
{''.join(samples)}
</body></html>
"""


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write `summary.json` and `report.html` into `out_dir` (default: the run dir); returns the summary."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    summary = summarize(run_dir)
    plots = {
        "adherence": plot_bars({s: summary["adherence"][s]["pooled"] for s in summary["systems"]},
                               "adherence without constitution (pooled)", "share in character"),
        "well_formed": plot_bars(summary["well_formed"], "well-formed replies", "share"),
        "relevant": plot_bars(summary["relevant"], "on-topic replies", "share"),
        "dpo": plot_curves(training_curves(run_dir, "dpo"), "DPO"),
        "sft": plot_curves(training_curves(run_dir, "sft"), "SFT"),
        "filters": plot_bars(summary["filter_pass_rates"], "filter pass rates", "share kept"),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "report.html", render_html(summary, plots))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The short table printed at the end of `charter run`."""
    lines = [f"{'system':<20} {'adherence':>9}  {'95% CI (pooled)':<16} {'well-formed':>11} {'relevant':>8}"]
    for s in summary["systems"]:
        a = summary["adherence"][s]
        ci = a["pooled"]["ci"]
        wf, rel = summary["well_formed"][s], summary["relevant"][s]
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.3f}"
        lines.append(f"{s:<20} {mean:>9}  [{ci[0]:.2f}, {ci[1]:.2f}]     "
                     f"{'n/a' if wf['rate'] is None else format(wf['rate'], '.3f'):>11} "
                     f"{'n/a' if rel['rate'] is None else format(rel['rate'], '.3f'):>8}")
    return "\n".join(lines)
