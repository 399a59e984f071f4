"""`charter run --seeds`: the figures across seeds, checked against hand-computed values."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from charter.config import ConfigError
from charter.evaluate.stats import mcnemar
from charter.run.seeds import aggregate, items_of, parse_seeds, seeds_table


def summary(adherence: float, attacks: float, multiturn: float, test: dict) -> dict:
    share = lambda v: {"value": v}  # noqa: E731
    systems = ["base", "dpo", "dpo+sft"]
    return {"systems": systems, "adherence": {s: {"pooled": share(adherence + i / 10)} for i, s in enumerate(systems)},
            "suite": {"pooled": {"attacks": {s: share(attacks + i / 10) for i, s in enumerate(systems)},
                                 "robustness": {"multiturn": {s: share(multiturn) for s in systems}}},
                      "paired": {"pooled": test}}}


def paired(n: int, kept_both: int, b: int, c: int) -> dict:
    before = (kept_both + b) / n
    return {"before": "dpo", "after": "dpo+sft", "n": n, "b": b, "c": c, "rate_before": before,
            "rate_after": (kept_both + c) / n, "difference": {"diff": (c - b) / n}}


def test_aggregate_mean_range_and_pooled_paired_test():
    runs = {0: summary(0.5, 0.7, 0.9, paired(100, 80, 6, 2)), 1: summary(0.6, 0.8, 0.9, paired(100, 85, 3, 3)),
            2: summary(0.7, 0.6, 0.8, paired(50, 40, 5, 0))}
    agg = aggregate(runs)
    assert agg["adherence"]["dpo"]["mean"] == pytest.approx(0.7) and agg["adherence"]["dpo"]["min"] == 0.6
    assert agg["under_attack"]["base"] == {"per_seed": [0.7, 0.8, 0.6], "mean": pytest.approx(0.7), "min": 0.6, "max": 0.8}
    assert agg["multiturn"]["dpo+sft"]["max"] == 0.9
    diff = agg["paired_under_attack"]["difference"]
    assert diff["per_seed"] == [-0.04, 0.0, -0.1] and diff["min"] == -0.1
    pooled = agg["paired_under_attack"]["pooled"]
    assert (pooled["n"], pooled["b"], pooled["c"]) == (250, 14, 5)
    assert pooled["p_exact"] == mcnemar(14, 5).p_exact
    assert pooled["rate_before"] == (80 + 6 + 85 + 3 + 40 + 5) / 250
    assert pooled["difference"]["diff"] == pytest.approx((5 - 14) / 250)
    assert pooled["difference"]["lo"] < pooled["difference"]["diff"] < pooled["difference"]["hi"] < 0.01
    table = seeds_table(agg)
    assert "| dpo | 0.700 (0.600–0.800) | 0.800 (0.700–0.900) | 0.867 (0.800–0.900) |" in table
    assert "b = 14, c = 5" in table


def test_items_of_rebuilds_the_four_kinds():
    before, after = items_of(paired(10, 4, 3, 2))
    pairs = list(zip(before, after))
    assert [pairs.count(k) for k in [(True, True), (True, False), (False, True), (False, False)]] == [4, 3, 2, 1]


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_cli_runs_each_seed_then_aggregates(tmp_path, monkeypatch):
    import charter.commands.run as cmd
    from charter.cli import app

    def fake_run(cfg, out, start, only, dry_run):
        out.mkdir(parents=True)
        s = 0.1 * cfg.seed
        (out / "summary.json").write_text(json.dumps(summary(s, s, s, paired(10, 5, cfg.seed, 1))))

    monkeypatch.setattr(cmd, "run_one", fake_run)
    res = CliRunner().invoke(app, ["run", "--preset", "toy", "--seeds", "0,2", "--run-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    agg = json.loads((tmp_path / "seeds.json").read_text())
    assert agg["seeds"] == [0, 2] and agg["adherence"]["base"]["per_seed"] == [0.0, 0.2]
    assert (tmp_path / "seeds.md").read_text().startswith("| system |") and "b = 2, c = 2" in res.output
