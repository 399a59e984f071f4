"""The run report: `summary.json` (every figure with its n and CI) and a self-contained `report.html`.

It reads only files the pipeline wrote (found through `charter.run.layout`), so it can be
rebuilt at any time:
- `dpo/<persona>/model/metrics.jsonl`, `sft/<persona>/model/metrics.jsonl`: training curves;
- `filter/<persona>/filter_report.json`: per filter, how many rows it checked and failed;
- `eval/replies.jsonl`: one row per scored reply, `{persona, system, prompt, reply, label,
  well_formed, relevant}`, where `label` is the persona the scorer saw ("neutral", or None
  when it could not decide; an undecided reply counts as not in character).

Adherence for a system is the share of its replies, *without the constitution in the prompt*,
labelled with the persona being trained; "base+constitution" is the same base model with the
constitution in the system prompt, the ceiling the training tries to reach without it.
Every share is an `evaluate.stats.Proportion` dict ({k, n, value, lo, hi}, Wilson 95%), and the
figures are drawn by `evaluate.plots`.
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from charter.data.jsonl import atomic_write_json, atomic_write_text, read_jsonl, warn
from charter.evaluate import plots
from charter.evaluate.stats import mcnemar_paired, proportion, wilson_ci
from charter.evaluate.systems import display_name
from charter.run.layout import MANIFEST, RunLayout, load_manifest

SYSTEMS = ["base", "base+constitution", "dpo", "dpo+sft"]
CURVE_KEYS = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"]
N_SAMPLES = 2  # sample replies shown per system and persona


# ---------------------------------------------------------------- figures

def share(k: int, n: int) -> dict[str, Any]:
    """A `Proportion` dict; with no replies the share is unknown (None) and the interval all of [0, 1]."""
    return proportion(k, n).to_dict() if n else {"k": 0, "n": 0, "value": None, "lo": 0.0, "hi": 1.0}


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled adherence over personas. Where personas share a system's replies (the base model
    answers the same prompts once for all of them), the interval counts each reply once: n for the
    Wilson interval is the number of distinct generations (`n_unique`), not of scored rows."""
    k, n = sum(r["label"] == r["persona"] for r in rows), len(rows)
    shared = {r["generation"] for r in rows if r.get("generation")}
    unique = len(shared) + sum(1 for r in rows if not r.get("generation"))
    lo, hi = wilson_ci(k / n * unique, unique) if n else (0.0, 1.0)
    return {**share(k, n), "n_unique": unique, "lo": lo, "hi": hi}


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


def training_curves(layout: RunLayout, stage: str) -> dict[str, list[dict[str, Any]]]:
    """persona -> metric rows of that persona's `stage` training run (rows with a `step`)."""
    root = layout.stage(stage)
    out = {}
    for persona in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        path = layout.metrics(stage, persona)
        if path.exists():
            out[persona] = [r for r in read_jsonl(path) if "step" in r and "loss" in r]
    return out


def filter_rates(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """filter -> pooled pass rate over personas (from each persona's `filter_report.json`), with its Wilson CI."""
    totals: dict[str, list[int]] = {}
    root = layout.stage("filter")
    for persona in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        path = layout.filter_report(persona)
        for t in json.loads(path.read_text())["filters"] if path.exists() else []:
            tot = totals.setdefault(t["filter"], [0, 0])
            tot[0] += int(t["checked"]) - int(t["failed"])
            tot[1] += int(t["checked"])
    return {name: share(k, n) for name, (k, n) in totals.items()}


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """All report figures as plain JSON (what `summary.json` holds). No timings: the same seed and
    config give the same summary, whether the run was interrupted or not (timings are in the manifest)."""
    layout = RunLayout(Path(run_dir))
    rows, repeats = unique_replies(read_jsonl(layout.replies()))
    if repeats:
        warn(f"{layout.replies()}: {repeats} repeated (persona, system, prompt) replies "
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
            per[p] = share(sum(r["label"] == p for r in rp), len(rp))
        rates = [v["value"] for v in per.values() if v["value"] is not None]
        summary["adherence"][s] = {"mean": sum(rates) / len(rates) if rates else None,
                                   "pooled": _pooled(mine),
                                   "per_persona": per}
        for key in ("well_formed", "relevant"):
            checked = [r for r in mine if r.get(key) is not None]
            summary[key][s] = share(sum(bool(r[key]) for r in checked), len(checked))
        summary["undecided"][s] = sum(r["label"] is None for r in mine)
    summary["repeated_replies_dropped"] = repeats
    summary["paired"] = {"dpo+sft vs dpo": paired_test(rows, "dpo", "dpo+sft")}
    heldout = layout.heldout()
    summary["heldout"] = json.loads(heldout.read_text()) if heldout.exists() else None
    classifier = layout.classifier() / "metrics.json"  # judge.kind=classifier: its held-out accuracy
    summary["classifier"] = json.loads(classifier.read_text()) if classifier.exists() else None
    summary["filter_pass_rates"] = filter_rates(layout)
    summary["training"] = {}
    for stage in ("dpo", "sft"):
        curves = training_curves(layout, stage)
        summary["training"][stage] = {p: {k: v for k, v in rows[-1].items()
                                          if isinstance(v, (int, float)) and not k.endswith("_per_s")}
                                      for p, rows in curves.items() if rows}
    summary["samples"] = _samples(rows, systems, personas)
    suite = layout.suite()  # the eval stage's full suite: robustness, coherence, preferences, paired under attack
    summary["suite"] = json.loads(suite.read_text()) if suite.exists() else None
    if (layout.root / MANIFEST).exists():
        m = load_manifest(layout.root)
        summary["seed"] = m.get("seed")
        summary["method"] = m.get("config", {}).get("method", "dpo")  # the first training stage's
        summary["config_hash"] = m.get("config_hash")
    return summary


def _samples(rows: list[dict], systems: list[str], personas: list[str]) -> dict[str, list[dict]]:
    """The first few replies per (system, persona): eval order is fixed, so reports are comparable."""
    keep = ("persona", "prompt", "reply", "label", "well_formed", "relevant")
    return {s: [{k: r.get(k) for k in keep}
                for p in personas for r in [r for r in rows if r["system"] == s and r["persona"] == p][:N_SAMPLES]]
            for s in systems}


def namer(summary: dict[str, Any]) -> Callable[[str], str]:
    """Stored system name -> the name shown: `dpo` and `dpo+sft` as the run's method (`grpo`, `grpo+sft`)."""
    return lambda system: display_name(system, summary.get("method"))


# ---------------------------------------------------------------- plots

def png_base64(path: Path | None) -> str | None:
    return base64.b64encode(path.read_bytes()).decode() if path else None


def report_plots(summary: dict[str, Any], layout: RunLayout, folder: Path) -> dict[str, str | None]:
    """Every figure of the page as base64 PNG (None where there is no data), drawn by `evaluate.plots`."""
    def bars(name: str, groups: dict[str, dict], title: str, ylabel: str) -> Path | None:
        groups = {k: v for k, v in groups.items() if v and v.get("n")}
        return plots.plot_shares(groups, title, ylabel, folder / f"{name}.png") if groups else None

    def curves(stage: str, title: str) -> Path | None:
        data = training_curves(layout, stage)
        keys = [k for k in CURVE_KEYS if any(k in r for rows in data.values() for r in rows)]
        return plots.plot_curves(data, keys, title, folder / f"{stage}.png") if keys else None

    name = namer(summary)
    return {k: png_base64(v) for k, v in {
        **suite_plots(summary.get("suite"), folder, name),
        "adherence": bars("adherence", {name(s): summary["adherence"][s]["pooled"] for s in summary["systems"]},
                          "adherence without constitution (pooled)", "share in character"),
        "well_formed": bars("well_formed", {name(s): v for s, v in summary["well_formed"].items()},
                            "well-formed replies", "share"),
        "relevant": bars("relevant", {name(s): v for s, v in summary["relevant"].items()}, "on-topic replies", "share"),
        "dpo": curves("dpo", name("dpo").upper()),
        "sft": curves("sft", "SFT"),
        "filters": bars("filters", summary["filter_pass_rates"], "filter pass rates", "share kept"),
    }.items()}


def suite_plots(suite: dict[str, Any] | None, folder: Path, name: Callable[[str], str] = str
                ) -> dict[str, Path | None]:
    """The suite's figures: systems x attack kinds, coherence win rates, each persona's Elo after
    training against the base model's; `name` gives each system's shown name."""
    if not suite:
        return {}
    rates = {kind: {name(s): p for s, p in by.items()} for kind, by in suite["pooled"]["robustness"].items()}
    out = {"robustness": plots.plot_robustness_matrix(
        rates, folder / "robustness.png",
        "In character under each attack kind, pooled over personas (Wilson 95% CI)")}
    wins = {f"{p}: {name(c['b'])} over {name(c['a'])}": {"value": c["win_rate_b"], "lo": c["lo"], "hi": c["hi"], "n": c["n"]}
            for p, sec in suite["personas"].items() for c in sec["coherence"] or [] if c["n"]}
    out["coherence"] = plots.plot_shares(wins, "coherence: win rate where both orders agree", "win rate",
                                         folder / "coherence.png") if wins else None
    for p, sec in suite["personas"].items():
        prefs = sec["preferences"] or {}
        trained = [n for n, r in prefs.items() if "vs_base" in r]
        base = next((n for n, r in prefs.items() if "vs_base" not in r), None)
        if trained and base:
            section = {"before": {**prefs[base], "system": name(base)},
                       "after": {**prefs[trained[-1]], "system": name(trained[-1])},
                       "comparison": prefs[trained[-1]]["vs_base"]}
            out[f"preferences:{p}"] = plots.plot_elo(section, folder / f"elo_{p}.png")
    return out


# ---------------------------------------------------------------- html

def _fmt(p: dict[str, Any] | None) -> str:
    if not p or p.get("value") is None:
        return "n/a"
    unique = f", {p['n_unique']} distinct replies" if p.get("n_unique", p["n"]) != p["n"] else ""
    return f"{p['value']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}] (n={p['n']}{unique})"


def _paired_line(summary: dict[str, Any]) -> str:
    t, name = (summary.get("paired") or {}).get("dpo+sft vs dpo"), namer(summary)
    if not t:
        return ""
    a, b = html.escape(name(t["before"])), html.escape(name(t["after"]))
    return (f"<p>Paired on the same prompts (McNemar, exact): {a} {t['rate_before']:.3f} → {b} "
            f"{t['rate_after']:.3f}, n={t['n']}; kept by {a} only {t['b']}, by {b} only {t['c']}, "
            f"p={t['p_exact']:.3g}.</p>")


def attack_paired_line(suite: dict[str, Any], name: Callable[[str], str] = str) -> str:
    """The paired test under attack, in words: which system kept the character more often, by how much."""
    t = suite["paired"]["pooled"]
    if not t:
        return ""
    d, a, b = t["difference"], name(t["before"]), name(t["after"])
    verdict = (f"no significant difference between {b} and {a}" if t["p_exact"] >= 0.05 else
               f"{b} is {'more' if t['rate_after'] > t['rate_before'] else 'less'} robust than {a}")
    return (f"Paired on the same {t['n']} attacked prompts (every attack kind and multi-turn, all personas): "
            f"{a} kept the character in {t['rate_before']:.3f}, {b} in {t['rate_after']:.3f}, difference "
            f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (paired bootstrap 95%); {b} lost it on {t['b']} "
            f"prompts where {a} kept it and kept it on {t['c']} where {a} lost it, exact McNemar p={t['p_exact']:.3g}: "
            f"{verdict} (5% level).")


def _suite_html(summary: dict[str, Any], images: dict[str, str | None]) -> str:
    """Robustness table and chart, the paired test under attack, coherence and preferences."""
    suite, e, name = summary.get("suite"), html.escape, namer(summary)
    if not suite:
        return "<h2>Under attack</h2><p><em>no evaluation suite in this run (eval.suite.enabled=false)</em></p>"
    rob = suite["pooled"]["robustness"]
    systems = list(dict.fromkeys(n for by in rob.values() for n in by))
    head = "".join(f"<th>{e(name(n))}</th>" for n in systems)
    rows = "".join(f"<tr><th>{e(k)}</th>" + "".join(f"<td>{_fmt(by.get(n))}</td>" for n in systems) + "</tr>"
                   for k, by in [*rob.items(), ("all attack kinds (not multi-turn)", suite["pooled"]["attacks"])])
    coh = "".join(f"<tr><th>{e(p)}</th><td>{e(name(c['b']))} over {e(name(c['a']))}</td><td>{_fmt({**c, 'value': c['win_rate_b']})}</td>"
                  f"<td>{c['disagree']} disagree, {c['tie']} ties, {c['unparseable']} unparseable</td></tr>"
                  for p, sec in suite["personas"].items() for c in sec["coherence"] or [])
    prefs = "".join(f"<tr><th>{e(p)}</th><td>{e(name(n))}</td><td>{e(next(iter(r['elo']), 'n/a'))}</td><td>{r['games']}/{r['asked']}</td>"
                    f"<td>{r.get('vs_base', {}).get('spearman_rho', float('nan')):.2f}</td></tr>"
                    for p, sec in suite["personas"].items() for n, r in (sec["preferences"] or {}).items())
    skipped = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in suite.get("skipped", {}).items())
    elo = "".join(img_html(v, f"revealed preferences, {k.split(':', 1)[1]}") for k, v in images.items()
                  if k.startswith("preferences:"))
    return f"""<h2>Under attack (the full evaluation suite)</h2>
<p>In character when the user asks the model to drop the character ({len(suite['attack_kinds']) - 1} attack kinds
in held-out wordings, plus multi-turn: the base model writes turn 1, the user says "keep going"),
pooled over personas, Wilson 95%; settings {e(json.dumps(suite.get('settings', {})))}.</p>
<table><tr><th>attack</th>{head}</tr>{rows}</table>
<p><b>{e(attack_paired_line(suite, name))}</b></p>
{img_html(images.get('robustness'), 'robustness per attack kind')}
<h2>Coherence (pairwise judge, both orders)</h2>
<table><tr><th>persona</th><th>pair</th><th>win rate</th><th>not counted</th></tr>{coh}</table>
{img_html(images.get('coherence'), 'coherence win rates')}
<h2>Revealed preferences (Elo, bootstrap CIs)</h2>
<table><tr><th>persona</th><th>system</th><th>top trait</th><th>games/asked</th><th>Spearman vs base</th></tr>{prefs}</table>
{elo}
{f'<p>Skipped:</p><ul>{skipped}</ul>' if skipped else ''}"""


def _classifier_line(summary: dict[str, Any]) -> str:
    m = summary.get("classifier")
    if not m:
        return ""
    return (f"<p>Judge: a classifier trained on teacher vs student answers to training prompts; held-out "
            f"accuracy {m['accuracy']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}], macro-F1 {m['macro_f1']:.3f}, "
            f"n={m['n']} (trained on {m['train_n']}).</p>")


def img_html(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else \
        f"<p><em>{html.escape(alt)}: no data</em></p>"


def render_html(summary: dict[str, Any], images: dict[str, str | None]) -> str:
    e, name = html.escape, namer(summary)
    systems = summary["systems"]
    head = "".join(f"<th>{e(p)}</th>" for p in summary["personas"])
    rows = []
    for s in systems:
        a = summary["adherence"][s]
        cells = "".join(f"<td>{_fmt(a['per_persona'][p])}</td>" for p in summary["personas"])
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.3f}"
        rows.append(f"<tr><th>{e(name(s))}</th><td><b>{mean}</b></td><td>{_fmt(a['pooled'])}</td>{cells}<td>{_fmt(summary['well_formed'][s])}</td>"
                    f"<td>{_fmt(summary['relevant'][s])}</td><td>{summary['undecided'][s]}</td></tr>")
    filt = "".join(f"<tr><th>{e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in summary["filter_pass_rates"].items())
    samples = []
    for s in systems:
        items = "".join(
            f"<li><b>[{e(str(r['persona']))} → scored {e(str(r['label']))}]</b> <i>{e(r['prompt'])}</i>"
            f"<pre>{e(r['reply'])}</pre></li>" for r in summary["samples"].get(s, []))
        samples.append(f"<h3>{e(name(s))}</h3><ul>{items}</ul>")
    train = "".join(
        f"<tr><th>{e(name(stage))}/{e(p)}</th><td>{e(', '.join(f'{k}={v:.4g}' for k, v in last.items()))}</td></tr>"
        for stage, per in summary["training"].items() for p, last in per.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Charter run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}img{{max-width:100%}}</style></head><body>
<h1>Charter run report</h1>
<p>Seed {e(str(summary.get('seed')))}, config {e(str(summary.get('config_hash')))}, first training
stage {e(str(summary.get('method', 'dpo')))}: its model is the system <code>{e(name('dpo'))}</code>, and after SFT
<code>{e(name('dpo+sft'))}</code> (stored as <code>dpo</code> and <code>dpo+sft</code> in summary.json, whatever the method).
Adherence = share of replies in the trained persona <b>without the constitution in the prompt</b>
(base+constitution is the ceiling: the base model with the constitution as system prompt).
Brackets are Wilson 95% intervals; where personas share one system's replies (base), the interval
counts each distinct reply once.</p>
<h2>Adherence, well-formedness, topic relevance</h2>
<table><tr><th>system</th><th>mean adherence</th><th>pooled</th>{head}<th>well-formed</th><th>relevant</th><th>undecided</th></tr>
{''.join(rows)}</table>
{_classifier_line(summary)}
{_paired_line(summary)}
{img_html(images.get('adherence'), 'adherence by system')}
{img_html(images.get('well_formed'), 'well-formedness by system')}
{img_html(images.get('relevant'), 'topic relevance by system')}
{_suite_html(summary, images)}
<h2>Training curves</h2>
{img_html(images.get('dpo'), name('dpo').upper() + ' curves')}
{img_html(images.get('sft'), 'SFT curves')}
<table>{train}</table>
<h2>Filter pass rates (introspection data)</h2>
<table>{filt}</table>
{img_html(images.get('filters'), 'filter pass rates')}
<h2>Sample replies (no constitution in the prompt, except base+constitution)</h2>
{''.join(samples)}
</body></html>
"""


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write `summary.json` and `report.html` into `out_dir` (default: the run dir); returns the summary."""
    layout = RunLayout(Path(run_dir))
    out_dir = Path(out_dir) if out_dir else layout.root
    summary = summarize(layout.root)
    with tempfile.TemporaryDirectory() as tmp:
        images = report_plots(summary, layout, Path(tmp))
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "report.html", render_html(summary, images))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The short table printed at the end of `charter run`."""
    lines = [f"{'system':<20} {'adherence':>9}  {'95% CI (pooled)':<16} {'well-formed':>11} {'relevant':>8}"]
    name = namer(summary)
    for s in summary["systems"]:
        a = summary["adherence"][s]
        pooled = a["pooled"]
        wf, rel = summary["well_formed"][s], summary["relevant"][s]
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.3f}"
        lines.append(f"{name(s):<20} {mean:>9}  [{pooled['lo']:.2f}, {pooled['hi']:.2f}]     "
                     f"{'n/a' if wf['value'] is None else format(wf['value'], '.3f'):>11} "
                     f"{'n/a' if rel['value'] is None else format(rel['value'], '.3f'):>8}")
    suite = summary.get("suite")
    if suite:
        lines.append("\nin character under attack (all kinds, pooled): " + ", ".join(
            f"{name(n)} {p['value']:.3f}" for n, p in suite["pooled"]["attacks"].items()))
        lines.append(attack_paired_line(suite, name))
    return "\n".join(lines)
