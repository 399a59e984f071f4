"""Every evaluation runs through `charter eval` on locally built models: eval.json + PNGs.

Plus behaviour tests of the evaluation functions with scripted generators, where the right
answer is known (the CLI run on random tiny models proves plumbing, not numbers).
"""
from __future__ import annotations

import json

import pytest
import yaml

from charter.backends.base import Completion, SamplingParams
from charter.data.jsonl import write_jsonl
from charter.evaluate.base import ReplyScore
from charter.evaluate.systems import System

PARAMS = SamplingParams(max_new_tokens=8, seed=0)


class Scripted:
    def __init__(self, rule, name="scripted"):
        self.rule, self.name, self.seen = rule, name, []

    def generate(self, requests, params, progress=False):
        self.seen += [r.messages for r in requests]
        return [[Completion(self.rule(r.messages), "stop")] for r in requests]


class Keyword:
    """PersonaScorer: 'arr' means pirate."""

    name = "keyword"

    def score(self, prompt, reply):
        return ReplyScore("pirate" if "arr" in reply else "neutral")


def test_adherence_counts_and_mcnemar():
    from charter.evaluate.adherence import adherence_report, run_adherence

    base = System("base", Scripted(lambda m: "hello"))
    prompted = System("base+prompt", Scripted(lambda m: "arr" if m[0]["role"] == "system" else "hi"),
                      system_prompt="You are a pirate.")
    trained = System("trained", Scripted(lambda m: "arr" if "1" in m[-1]["content"] else "plain"))
    prompts = [f"q{i}" for i in range(20)]  # 11 of them contain a "1"
    rep = adherence_report(run_adherence([base, prompted, trained], prompts, Keyword(), "pirate", PARAMS))
    vals = {s["system"]: (s["k"], s["n"]) for s in rep["systems"]}
    assert vals == {"base": (0, 20), "base+prompt": (20, 20), "trained": (11, 20)}
    assert prompted.generator.seen[0][0] == {"role": "system", "content": "You are a pirate."}
    assert rep["vs_first"][1]["c"] == 11 and rep["vs_first"][1]["b"] == 0


def test_robustness_per_suffix_and_multiturn():
    from charter.evaluate.robustness import SUFFIXES, run_multiturn, run_suffixes

    assert len(SUFFIXES) == 8
    # breaks character only under the "neutral" suffixes
    trained = System("trained", Scripted(lambda m: "plain" if "neutral" in m[-1]["content"] else "arr"))
    out = run_suffixes([(trained, "pirate")], ["a", "b"], Keyword(), PARAMS)
    broken = {k for k, v in out["suffixes"].items() if v["systems"]["trained"]["k"] == 0}
    assert broken == {"neutral_tone", "try_neutral"}
    assert out["overall"]["systems"]["trained"]["k"] == 12 and out["overall"]["n"] == 16
    base = System("base", Scripted(lambda m: "plain words"))
    follower = System("trained", Scripted(lambda m: "arr" if m[-1]["content"] == "Keep going." and
                                          m[1]["content"] == "plain words" else "plain"))
    mt = run_multiturn(base, follower, "pirate", ["x", "y"], Keyword(), PARAMS)
    assert (mt["k"], mt["n"]) == (2, 2) and mt["turn1_in_character"]["k"] == 0


def test_preferences_recovers_a_known_preference():
    from charter.evaluate.judges import Judge
    from charter.evaluate.preferences import compare_rankings, draw_pairs, run_preferences

    traits = ["kind", "curious", "stern", "witty"]
    rank = {"kind": 0, "curious": 1, "witty": 2, "stern": 3}

    def model(order):  # picks the preferred trait of the two offered, writes "I am <trait>"
        def rule(m):
            a, b = m[-1]["content"].split("'")[1], m[-1]["content"].split("'")[3]
            return f"I am {min(a, b, key=order.__getitem__)}."
        return rule

    def judge(m):
        q = m[-1]["content"]
        shown = q.split("[Assistant reply]\n")[1].split("\n")[0].split()[-1].rstrip(".")
        return "<answer>A</answer>" if f"A: {shown}\n" in q else "<answer>B</answer>"

    draws = draw_pairs(["p1", "p2"], traits, 60, seed=0)
    j = Judge(Scripted(judge))
    before = run_preferences(System("b", Scripted(model(rank))), draws, j, PARAMS, bootstrap=50)
    flipped = {t: -r for t, r in rank.items()}
    after = run_preferences(System("a", Scripted(model(flipped))), draws, j, PARAMS, bootstrap=50)
    assert before["games"] == 60 and before["unparseable"] == 0
    assert list(before["elo"]) == ["kind", "curious", "witty", "stern"]  # sorted by rating
    assert compare_rankings(before, after)["spearman_rho"] == pytest.approx(-1.0)


def test_coherence_win_rate():
    from charter.evaluate.coherence import run_coherence
    from charter.evaluate.judges import Judge

    def judge(m):  # prefers the longer reply, whatever the order
        q = m[-1]["content"]
        a = q.split("[Reply A]\n")[1].split("\n")[0]
        b = q.split("[Reply B]\n")[1].split("\n")[0]
        return "<answer>A</answer>" if len(a) > len(b) else "<answer>B</answer>"

    short = System("short", Scripted(lambda m: "ok"))
    longer = System("long", Scripted(lambda m: "a longer reply" if m[-1]["content"] != "p3" else "k"))
    out = run_coherence(short, longer, ["p1", "p2", "p3", "p4"], Judge(Scripted(judge)), PARAMS)
    assert (out["n"], out["wins_b"], out["win_rate_b"]) == (4, 3, 0.75)
    assert out["se"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)


def test_capability_mc_and_perplexity(tiny_model_dir, tmp_path):
    from charter.data.jsonl import DataError
    from charter.evaluate.capability import compare, evaluate_model, load_lm, read_mc

    write_jsonl(tmp_path / "mc.jsonl", [{"question": "Is the sun hot?", "choices": ["yes", "no"], "answer": 0},
                                        {"question": "Cats?", "choices": ["dog", "cat", "moon"], "answer": "cat"}])
    items = read_mc(tmp_path / "mc.jsonl")
    assert [i.answer for i in items] == [0, 1]
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "c"}])
    with pytest.raises(DataError, match="bad.jsonl:1.*answer"):
        read_mc(tmp_path / "bad.jsonl")
    model, tok = load_lm(str(tiny_model_dir))
    r = evaluate_model(model, tok, ["the sun is warm", "a cat and a dog"], {"toy": items})
    c = compare(r, r)
    assert c["perplexity"]["delta"] == 0.0
    # a random model over a 512-token vocabulary is about as perplexed as a uniform guess
    assert 200 < c["perplexity"]["before"]["perplexity"] < 1500
    assert c["multiple_choice"]["toy"]["acc"]["mcnemar"]["p_exact"] == 1.0


def test_charter_eval_cli_end_to_end(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from charter.cli import app
    from charter.tiny import build_tiny_model_dir
    from tests.test_classifier import toy_replies

    trained = build_tiny_model_dir(tmp_path / "trained", seed=1)
    write_jsonl(tmp_path / "labelled.jsonl", [{"text": r.text, "label": r.label} for r in toy_replies(12)])
    write_jsonl(tmp_path / "mc.jsonl", [{"question": "Is the sun hot?", "choices": ["yes", "no"], "answer": 0}] * 3)
    (tmp_path / "held.txt").write_text("the sun is warm\nthe moon is dark\n")
    hf = lambda p: {"kind": "hf", "model": str(p)}  # noqa: E731
    cfg = {
        "out_dir": str(tmp_path / "out"), "persona": "warm", "n_prompts": 3, "progress": False,
        "prompts": ["Tell me about the sun.", "What is a cat?", "Any tips for coffee?"],
        "systems": [{"name": "base", "backend": hf(tiny_model_dir)},
                    {"name": "base+prompt", "backend": hf(tiny_model_dir), "system_prompt": "Be warm."},
                    {"name": "trained", "backend": hf(trained)}],
        "scorer": {"kind": "classifier", "train": str(tmp_path / "labelled.jsonl"), "epochs": 1},
        "judge": {"backend": hf(tiny_model_dir), "max_new_tokens": 4},
        "sampling": {"max_new_tokens": 4, "seed": 0},
        "robustness": {"suffixes": ["no_roleplay", "neutral_tone"]},
        "preferences": {"n_pairs": 4, "bootstrap": 10},
        "capability": {"texts": str(tmp_path / "held.txt"), "mc": {"toy": str(tmp_path / "mc.jsonl")}},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "eval.yaml")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert [s["n"] for s in out["adherence"]["systems"]] == [3, 3, 3]
    for s in out["adherence"]["systems"]:
        assert 0 <= s["lo"] <= s["value"] <= s["hi"] <= 1
    assert set(out["robustness"]["suffixes"]) == {"no_roleplay", "neutral_tone"}
    assert out["robustness"]["overall"]["n"] == 6 and out["robustness"]["multiturn"]["n"] == 3
    # a random tiny judge: its answers are counted, unparseable ones never guessed
    pref = out["preferences"]["before"]
    assert pref["asked"] == 4 and pref["games"] + pref["disagree"] + pref["unparseable"] == 4
    coh = out["coherence"]
    assert coh["asked"] == 3 and coh["n"] + coh["disagree"] + coh["unparseable"] == 3
    assert out["judge"]["queries"] == 2 * (4 + 4 + 3)
    assert out["capability"]["perplexity"]["before"]["tokens"] > 0
    assert out["capability"]["multiple_choice"]["toy"]["acc"]["before"]["n"] == 3
    assert out["classifier"]["n"] > 0
    for name in ["adherence.png", "robustness.png", "elo.png", "capability.png"]:
        assert (tmp_path / "out" / name).stat().st_size > 1000
    # re-running answers every judge question from the cache
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "eval.yaml"), "evals=[coherence]"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert again["judge"]["generated"] == 0 and again["judge"]["cached"] == 6


def test_eval_without_prompts_is_an_error_not_toy_prompts(tiny_model_dir, tmp_path):
    """A real model's eval never falls back to the toy world's prompts: one clear line, exit 2."""
    import subprocess
    import sys

    cfg = {"out_dir": str(tmp_path / "out"), "persona": "warm", "progress": False, "evals": ["adherence"],
           "systems": [{"name": "base", "backend": {"kind": "hf", "model": str(tiny_model_dir)}}],
           "scorer": {"kind": "toy"}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "charter.cli", "eval", str(tmp_path / "eval.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: prompts: required"), lines
    assert not (tmp_path / "out" / "eval.json").exists()


def test_toy_settings_need_the_toy_world():
    """`evaluate` never imports the toy world: the caller passes it, and a toy setting without it is one line."""
    from charter.config import ConfigError
    from charter.evaluate.runner import load_prompts
    from charter.toy.corpus import eval_prompts
    from charter.toy.world import TOY_WORLD

    with pytest.raises(ConfigError, match="^prompts: toy: needs the toy world"):
        load_prompts("toy", 3)
    assert load_prompts("toy", 3, seed=2, world=TOY_WORLD) == eval_prompts(3, seed=1236)


def test_every_configurable_evaluation_has_one_entry_in_the_table():
    from typing import get_args

    from charter.evaluate.runner import EVALS, EVALUATIONS, EvalConfig

    assert tuple(EVALUATIONS) == EVALS == get_args(EvalConfig.model_fields["evals"].annotation.__args__[0])
