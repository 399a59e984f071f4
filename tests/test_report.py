"""The report builds from synthetic run files, embeds its plots, and states the right numbers."""
from __future__ import annotations

import base64
import json
import re

from charter.data.jsonl import write_jsonl
from charter.evaluate.stats import wilson_ci
from charter.report import build_report, format_table


def _replies(persona: str, system: str, k: int, n: int, wf: int, rel: int) -> list[dict]:
    """n replies of which the first k carry the persona, the first wf are well formed, first rel relevant."""
    return [{"persona": persona, "system": system, "prompt": f"q{i} <b>", "reply": f"reply {system} {i}",
             "label": persona if i < k else "neutral", "well_formed": i < wf, "relevant": i < rel}
            for i in range(n)]


def make_run(tmp_path):
    rows = []
    for p, (kb, kd, ks) in {"warm": (1, 16, 18), "sarcastic": (0, 14, 17)}.items():
        rows += _replies(p, "base", kb, 20, 20, 15)
        rows += _replies(p, "base+constitution", 20, 20, 20, 16)
        rows += _replies(p, "dpo", kd, 20, 19, 14)
        rows += _replies(p, "dpo+sft", ks, 20, 19, 15)
    for r in rows:  # the base model answers once for every persona: its replies are shared
        if r["system"] == "base":
            r["generation"] = "base-" + r["prompt"]
    rows[0]["label"] = None  # one undecided reply (base, warm): counts as not in character
    write_jsonl(tmp_path / "eval" / "replies.jsonl", rows)
    for p in ("warm", "sarcastic"):
        write_jsonl(tmp_path / "dpo" / p / "model" / "metrics.jsonl",
                    [{"step": s, "loss": 0.69 - 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s} for s in range(1, 5)])
        write_jsonl(tmp_path / "sft" / p / "model" / "metrics.jsonl",
                    [{"step": s, "loss": 3.0 - 0.5 * s} for s in range(1, 4)])
        (tmp_path / "filter" / p).mkdir(parents=True)
        (tmp_path / "filter" / p / "filter_report.json").write_text(json.dumps({"filters": [
            {"filter": "length", "checked": 10, "failed": 1}, {"filter": "repetition", "checked": 9, "failed": 3}]}))
    (tmp_path / "manifest.json").write_text(json.dumps({"seed": 7, "config_hash": "abc", "stages": {}}))


def test_summary_numbers(tmp_path):
    make_run(tmp_path)
    s = build_report(tmp_path)
    assert s["systems"] == ["base", "base+constitution", "dpo", "dpo+sft"]
    assert s["adherence"]["base"]["per_persona"]["warm"]["k"] == 0  # the undecided one is not adherent
    assert s["adherence"]["dpo"]["mean"] == (16 / 20 + 14 / 20) / 2
    lo, hi = wilson_ci(35, 40)
    assert s["adherence"]["dpo+sft"]["pooled"] == {"k": 35, "n": 40, "n_unique": 40, "value": 35 / 40,
                                                   "lo": lo, "hi": hi}
    # 40 base rows, but 20 replies: the interval is as wide as 20 replies allow, not 40
    base = s["adherence"]["base"]["pooled"]
    assert (base["k"], base["n"], base["n_unique"]) == (0, 40, 20)
    assert (base["lo"], base["hi"]) == wilson_ci(0, 20) and base["hi"] > wilson_ci(0, 40)[1] + 0.05
    # paired on the same (persona, prompt): dpo+sft kept 2 + 3 replies dpo lost, and lost none it kept
    paired = s["paired"]["dpo+sft vs dpo"]
    assert (paired["n"], paired["b"], paired["c"]) == (40, 0, 5) and paired["p_exact"] == 2 * 0.5 ** 5
    assert s["well_formed"]["dpo"]["k"] == 38 and s["relevant"]["base"]["k"] == 30
    assert s["undecided"] == {"base": 1, "base+constitution": 0, "dpo": 0, "dpo+sft": 0}
    assert s["filter_pass_rates"]["repetition"]["k"] == 12 and s["filter_pass_rates"]["repetition"]["n"] == 18
    assert s["training"]["dpo"]["warm"]["loss"] == 0.69 - 0.4
    assert s["seed"] == 7
    assert len(s["samples"]["dpo"]) == 4  # 2 per persona
    assert json.loads((tmp_path / "summary.json").read_text()) == s


def test_html_is_self_contained_with_pngs_and_numbers(tmp_path):
    make_run(tmp_path)
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) == 6  # adherence, well-formed, relevant, DPO, SFT, filters
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page  # nothing external
    assert "0.750" in page  # dpo mean adherence (0.8 + 0.7) / 2
    lo, hi = wilson_ci(35, 40)
    assert f"[{lo:.2f}, {hi:.2f}]" in page
    assert "q0 &lt;b&gt;" in page  # sample prompts are escaped, not injected


def test_missing_training_data_degrades_to_notes(tmp_path):
    write_jsonl(tmp_path / "eval" / "replies.jsonl", _replies("warm", "base", 0, 5, 5, 5))
    s = build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "DPO curves: no data" in page and s["training"] == {"dpo": {}, "sft": {}}
    table = format_table(s)
    assert table.splitlines()[1].startswith("base") and "0.000" in table


def test_classifier_accuracy_in_summary_and_page(tmp_path):
    make_run(tmp_path)
    assert build_report(tmp_path)["classifier"] is None  # no classifier judge, no line
    assert "held-out accuracy" not in (tmp_path / "report.html").read_text()
    metrics = {"train_n": 90, "accuracy": 0.9, "lo": 0.744, "hi": 0.965, "n": 30, "macro_f1": 0.899}
    (tmp_path / "eval" / "classifier").mkdir()
    (tmp_path / "eval" / "classifier" / "metrics.json").write_text(json.dumps(metrics))
    assert build_report(tmp_path)["classifier"] == metrics
    assert "held-out accuracy 0.900 [0.744, 0.965], macro-F1 0.899, n=30 (trained on 90)" in \
        (tmp_path / "report.html").read_text()


def test_plots_leave_pyplot_alone(tmp_path):
    """A figure is drawn and saved as a PNG without importing pyplot, so a caller's own pyplot
    backend (a notebook's) is never switched; run in a fresh interpreter, since other tests may
    have imported pyplot already."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from charter.evaluate.plots import plot_shares; "
            "p = plot_shares({'a': {'k': 3, 'n': 4, 'value': 0.75, 'lo': 0.3, 'hi': 0.95}}, 't', 'share', "
            f"Path({str(tmp_path / 'shares.png')!r})); "
            "print('matplotlib.pyplot' in sys.modules, p.read_bytes()[:8] == b'\\x89PNG\\r\\n\\x1a\\n')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
