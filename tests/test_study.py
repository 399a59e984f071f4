"""Methods x seeds (`charter run --methods ... --seeds ...`, `study:`, `--preset toy-methods`): each
(method, seed) an ordinary run, and methods.json's figures equal to the runs' own counts, pooled."""
from __future__ import annotations

import json
import re
from typing import get_args

import pytest
from typer.testing import CliRunner

from charter.cli import app
from charter.config import ConfigError
from charter.evaluate.stats import wilson_ci
from charter.run.config import Method, load_run_config, preset_data
from charter.run.study import ADHERENCE_BAR, WELL_FORMED_BAR, parse_methods, study_runs

METHODS, SEEDS = ("dpo", "grpo"), (0, 1)
TINY_GRPO = ["grpo.max_steps=1", "grpo.batch_size=1", "grpo.group_size=2", "grpo.max_new_tokens=12"]
TINY_SUITE = ["eval.suite.attack_prompts=1", "eval.suite.n_pairs=1", "eval.suite.bootstrap=1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 2 methods x 2 seeds study on the talker at minimal counts, run twice through the CLI."""
    from talker import build_talker, tiny_run

    root = tmp_path_factory.mktemp("study")
    args = tiny_run(build_talker(root / "talker"), root / "runs") + [
        *TINY_GRPO, *TINY_SUITE, "--methods", ",".join(METHODS), "--seeds", ",".join(map(str, SEEDS))]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args)
    return root / "runs", first, again


def _summary(root, method, seed):
    return json.loads((root / method / f"seed-{seed}" / "summary.json").read_text())


def test_every_method_and_seed_is_an_ordinary_run(study):
    root, _, _ = study
    for m in METHODS:
        for k in SEEDS:
            s = _summary(root, m, k)
            assert (s["method"], s["seed"]) == (m, k)
        assert json.loads((root / m / "seeds.json").read_text())["seeds"] == list(SEEDS)
    assert (root / "methods.md").read_text().startswith("| system |")
    assert "grpo+sft" in (root / "methods.html").read_text() and "data:image/png;base64" in (root / "methods.html").read_text()


def test_a_second_invocation_only_aggregates(study):
    root, first, again = study
    assert again.exit_code == 0, again.output
    stages = sum(len(json.loads((root / m / f"seed-{k}" / "manifest.json").read_text())["stages"])
                 for m in METHODS for k in SEEDS)
    assert first.output.count("cached  inputs and config unchanged") == 0
    assert again.output.count("cached  inputs and config unchanged") == stages  # every stage of every run
    assert again.output.count("  run  ") == again.output.count("resume ") == 0


def test_methods_json_pools_the_runs_counts(study):
    root, _, _ = study
    agg = json.loads((root / "methods.json").read_text())
    assert agg["methods"] == list(METHODS) and agg["seeds"] == list(SEEDS)
    assert list(agg["systems"]) == ["base", "base+constitution", "dpo", "dpo+sft", "grpo", "grpo+sft"]
    where = {"adherence": lambda m, s: m["adherence"][s]["pooled"], "well_formed": lambda m, s: m["well_formed"][s],
             "relevant": lambda m, s: m["relevant"][s], "under_attack": lambda m, s: m["suite"]["pooled"]["attacks"][s],
             "multiturn": lambda m, s: m["suite"]["pooled"]["robustness"]["multiturn"][s]}
    for label, row in agg["systems"].items():
        method = row["method"] or METHODS[0]  # the baselines come from the first method's runs
        runs = [_summary(root, method, k) for k in SEEDS]
        for figure, get in where.items():
            shares = [get(r, row["system"]) for r in runs]
            k, n = sum(p["k"] for p in shares), sum(p["n"] for p in shares)
            unique = sum(p.get("n_unique", p["n"]) for p in shares)
            got = row[figure]
            assert (got["k"], got["n"], got["n_unique"]) == (k, n, unique), (label, figure)
            assert got["value"] == pytest.approx(k / n)
            assert (got["lo"], got["hi"]) == pytest.approx(wilson_ci(k / n * unique, unique))
            assert got["per_seed"] == [p["value"] for p in shares]
            assert (got["min"], got["max"]) == (min(got["per_seed"]), max(got["per_seed"]))
        if row["method"] is not None:
            bar = [r["adherence"][row["system"]]["pooled"]["value"] >= ADHERENCE_BAR and
                   r["well_formed"][row["system"]]["value"] >= WELL_FORMED_BAR * r["well_formed"]["base"]["value"]
                   for r in runs]
            assert row["meets_bar"] == {"per_seed": bar, "all": all(bar)}
    for m in METHODS:
        secs = [json.loads((root / m / f"seed-{k}" / "manifest.json").read_text())["stages"]["dpo"]["seconds"]
                for k in SEEDS]
        assert agg["systems"][m]["train_seconds"]["per_seed"] == secs
    assert agg["systems"]["grpo"]["pair_data_seconds"]["mean"] is None  # no teacher, student or pairs stage
    assert agg["systems"]["dpo"]["pair_data_seconds"]["mean"] > 0
    prompts = [{r["prompt"] for r in map(json.loads, (root / "dpo" / f"seed-{k}" / "eval" / "replies.jsonl")
                                         .read_text().splitlines())} for k in SEEDS]
    assert agg["prompts"]["per_seed"] == [len(p) for p in prompts]
    assert agg["prompts"]["distinct_over_seeds"] == len(prompts[0] | prompts[1])


def test_report_names_the_method(study):
    root, first, _ = study
    page = (root / "grpo" / "seed-0" / "report.html").read_text()
    assert "<tr><th>grpo</th>" in page and "<tr><th>grpo+sft</th>" in page and "<th>dpo</th>" not in page
    assert "| grpo+sft |" in (root / "grpo" / "seeds.md").read_text()
    assert "\ngrpo+sft " in first.output  # the table `charter run` prints
    card = (root / "grpo" / "seed-0" / "merge" / "sarcastic" / "model" / "README.md").read_text()
    assert "| GRPO + SFT, merged (this model) |" in card
    assert json.loads((root / "grpo" / "seed-0" / "summary.json").read_text())["systems"][2:] == ["dpo", "dpo+sft"]


# ---------------------------------------------------------------- flags, presets, the study section


@pytest.mark.parametrize("text,message", [
    ("dpo,foo", "--methods 'dpo,foo': unknown method 'foo' (methods: dpo, orpo"),
    ("dpo,dpo", "expected distinct method names"),
    (",", "expected distinct method names"),
])
def test_methods_flag_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_methods(text)
    res = CliRunner().invoke(app, ["run", "--preset", "toy", "--methods", text, "--dry-run"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message.split(" (")[0] in res.output


def test_toy_methods_preset_extends_toy_and_lists_every_method():
    toy, cfg = load_run_config(preset="toy"), load_run_config(preset="toy-methods")
    changed = {k for k in type(toy).model_fields if getattr(toy, k) != getattr(cfg, k)}
    assert changed == {"name", "constitutions", "study"} and cfg.constitutions == ["toy:sarcastic"]
    assert cfg.study.seeds == [0, 1, 2]
    accepted = []
    for m in get_args(Method):  # every method `charter run` accepts (ppo joins when it is wired in)
        try:
            load_run_config(preset="toy", overrides=[f"method={m}"])
            accepted.append(m)
        except ConfigError:
            pass
    assert cfg.study.methods == accepted


def test_extends_cycle_and_unknown_base_are_one_line(tmp_path, monkeypatch):
    import charter.run.config as rc

    monkeypatch.setattr(rc, "PRESET_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("extends: b\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a\nseed: 3\n")
    (tmp_path / "c.yaml").write_text("extends: nope\n")
    (tmp_path / "d.yaml").write_text("extends: e\nname: d\ndpo: {beta: 0.5}\n")
    (tmp_path / "e.yaml").write_text("seed: 4\ndpo: {beta: 0.1, lr: 0.001}\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends 'b'.* \(b -> a -> b\)|b.yaml: extends 'a'"):
        preset_data("a")
    with pytest.raises(ConfigError, match="c.yaml: extends 'nope': unknown preset"):
        preset_data("c")
    assert preset_data("d") == {"seed": 4, "name": "d", "dpo": {"beta": 0.5, "lr": 0.001}}


def test_study_section_and_flags(tmp_path):
    cfg = load_run_config(preset="toy-methods", overrides=["study.methods=[sdft]"])
    runs = study_runs(cfg, cfg.study, tmp_path)
    assert [(c.method, c.seed, d.relative_to(tmp_path).as_posix()) for c, d in runs] == [
        ("sdft", k, f"sdft/seed-{k}") for k in (0, 1, 2)]
    assert all(c.study.methods == [] and c.constitutions == ["toy:sarcastic"] for c, _ in runs)
    bad = load_run_config(preset="toy-methods", overrides=["dpo.kl_coef=0.1"])  # orpo and simpo have no reference
    with pytest.raises(ConfigError, match="^study.methods: orpo: method: .*no reference model") as e:
        study_runs(bad, bad.study, tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="study.seeds"):
        load_run_config(preset="toy", overrides=["study.seeds=[1,1]"])


def test_the_study_section_is_in_no_stage_key():
    from charter.run.engine import settings_hash
    from charter.run.personas import Run
    from charter.run.stages import build_pipeline

    def hashes(*over):
        run = Run.of(load_run_config(preset="toy", overrides=list(over)))
        return {s.name: settings_hash(s, run) for s in build_pipeline().stages}

    assert hashes("study.methods=[dpo,grpo]", "study.seeds=[3,4]") == hashes()


# ---------------------------------------------------------------- the arithmetic, on hand-made runs


def _share(k: int, n: int, unique: int | None = None) -> dict:
    return {"k": k, "n": n, "value": k / n, **({"n_unique": unique} if unique is not None else {})}


def _fake_run(folder, adherence: dict, well_formed: dict, prompts: list[str], seconds: dict) -> None:
    """A finished run's summary.json (one persona; base shared by 2 personas' worth of rows), manifest
    and replies, with the counts given (k per system out of n = 10 replies, 5 distinct for base)."""
    systems = ["base", "base+constitution", "dpo", "dpo+sft"]
    unique = {"base": 5}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "personas": ["sarcastic"], "systems": systems, "method": folder.parent.name,
        "adherence": {s: {"pooled": _share(adherence[s], 10, unique.get(s, 10))} for s in systems},
        "well_formed": {s: _share(well_formed[s], 10) for s in systems},
        "relevant": {s: _share(7, 10) for s in systems},
        "suite": {"pooled": {"attacks": {s: _share(adherence[s] // 2, 20, 2 * unique.get(s, 10)) for s in systems},
                             "robustness": {"multiturn": {s: _share(1, 4) for s in systems}}}}}))
    (folder / "manifest.json").write_text(json.dumps({"stages": {k: {"seconds": v} for k, v in seconds.items()}}))
    (folder / "eval").mkdir()
    (folder / "eval" / "replies.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def test_aggregate_methods_by_hand(tmp_path):
    from charter.run.study import aggregate_methods, methods_table

    wf_base = 10
    for k, (dpo, wf) in enumerate([(9, 10), (10, 9)]):  # seed 0: meets the bar; seed 1: well-formed 0.9 < 0.95
        base = {"base": 0, "base+constitution": 8 + k}
        _fake_run(tmp_path / "dpo" / f"seed-{k}", {**base, "dpo": dpo, "dpo+sft": 6},
                  {"base": wf_base, "base+constitution": 10, "dpo": wf, "dpo+sft": 10},
                  ["a", "b", "c"][k:k + 2], {"teacher": 10.0, "student": 5.0, "pairs": 1.0, "dpo": 20.0 + k})
        _fake_run(tmp_path / "sdft" / f"seed-{k}", {**base, "base": 3, "dpo": 5, "dpo+sft": 4},
                  {"base": wf_base, "base+constitution": 10, "dpo": 10, "dpo+sft": 10}, ["x"], {"dpo": 60.0})
    agg = aggregate_methods(tmp_path, ["dpo", "sdft"], [0, 1])
    rows = agg["systems"]
    assert list(rows) == ["base", "base+constitution", "dpo", "dpo+sft", "sdft", "sdft+sft"]
    assert rows["base"]["adherence"]["k"] == 0  # from the first method's runs (sdft's base says 3)
    c = rows["base+constitution"]["adherence"]
    assert (c["k"], c["n"], c["n_unique"], c["per_seed"], c["min"], c["max"]) == (17, 20, 20, [0.8, 0.9], 0.8, 0.9)
    assert (c["lo"], c["hi"]) == pytest.approx(wilson_ci(17, 20))
    b = rows["base"]["under_attack"]  # base rows: 20 scored, 10 distinct per seed
    assert (b["k"], b["n"], b["n_unique"]) == (0, 40, 20) and (b["lo"], b["hi"]) == pytest.approx(wilson_ci(0, 20))
    d = rows["dpo"]
    assert (d["adherence"]["k"], d["adherence"]["n"]) == (19, 20) and d["adherence"]["value"] == pytest.approx(0.95)
    assert (d["under_attack"]["k"], d["under_attack"]["n"]) == (4 + 5, 40)
    assert (d["multiturn"]["k"], d["multiturn"]["n"]) == (2, 8)
    assert d["meets_bar"] == {"per_seed": [True, False], "all": False}
    assert rows["sdft"]["meets_bar"] == {"per_seed": [False, False], "all": False}  # adherence 0.5
    assert d["train_seconds"]["mean"] == 20.5 and d["pair_data_seconds"]["per_seed"] == [16.0, 16.0]
    assert rows["sdft"]["train_seconds"]["per_seed"] == [60.0, 60.0] and rows["sdft"]["pair_data_seconds"]["mean"] is None
    assert "meets_bar" not in rows["base"] and "train_seconds" not in rows["dpo+sft"]
    assert agg["prompts"] == {"per_seed": [2, 2], "distinct_over_seeds": 3, "repeated_across_seeds": True}
    table = methods_table(agg)
    assert "| dpo | 0.950 [" in table and "(0.900–1.000) |" in table and "| yes, no | 20 (20–21) + 16 |" in table
    assert "| sdft+sft | 0.400 [" in table and "3 distinct prompts over the seeds" in table


def test_a_run_in_use_elsewhere_is_skipped_then_aggregated(tmp_path, monkeypatch):
    """Two shells on one study: the runs held by the other are skipped (exit 1, nothing aggregated);
    once it has finished, the same command only aggregates."""
    import charter.commands.run as cmd
    from charter.locks import hold_folder

    ran = []

    def fake_run(cfg, out, start, only, dry_run):
        with hold_folder(out):  # the real run_one's one-writer rule
            ran.append(out.relative_to(tmp_path).as_posix())
            if not (out / "summary.json").exists():
                shares = {"base": 1, "base+constitution": 9, "dpo": 8, "dpo+sft": 7}
                _fake_run(out, shares, {s: 10 for s in shares}, ["p"], {"dpo": 1.0})

    monkeypatch.setattr(cmd, "run_one", fake_run)
    args = ["run", "--preset", "toy", "--methods", "dpo,sdft", "--seeds", "0,1", "--run-dir", str(tmp_path)]
    with hold_folder(tmp_path / "sdft" / "seed-0"):  # another process's run
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "skipping" in res.output and "1 of the study's runs are in use" in res.output
    assert ran == ["dpo/seed-0", "dpo/seed-1", "sdft/seed-1"] and not (tmp_path / "methods.json").exists()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "methods.json").read_text())["systems"]["sdft"]["adherence"]["k"] == 16
