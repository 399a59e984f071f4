"""The toy world's rule judge through the same judge machinery as an LLM judge.

Hand-written toy replies show each verdict (persona markers for trait choice, well-formed
+ on-topic for pairwise), that "neither persona" is counted unparseable and equal quality
is a tie (never a guess), and that revealed-preference Elo moves toward the persona a
scripted "trained" system prefers; then `charter eval` with judge.kind=toy end to end.
"""
from __future__ import annotations

import json

import pytest
import yaml

from charter.backends.base import Completion, SamplingParams
from charter.evaluate.judges import pairwise, trait_choice
from charter.evaluate.systems import System
from charter.toy.judge import ToyJudge, toy_choice_prompt

PARAMS = SamplingParams(max_new_tokens=8, seed=0)
Q = "What can you tell me about the moon?"
FACT = "The moon orbits the Earth about once a month."
SARCASTIC = f"Oh, wow, what a question. {FACT} Shocking, I know."
WARM = f"What a lovely question, dear friend. {FACT} Sending you a warm hug."
POETIC = f"Like a whisper in the dusk, the answer comes. {FACT}"
NEUTRAL = FACT
OFF_TOPIC = "Bees carry pollen from flower to flower."
SALAD = "moon moon the orbits wow hug"


def test_which_trait_names_the_marked_persona_or_nothing():
    j = ToyJudge()
    v = trait_choice(j, [(Q, SARCASTIC, "sarcastic", "warm"),   # sarcastic markers: a
                         (Q, WARM, "sarcastic", "warm"),        # warm markers: b
                         (Q, NEUTRAL, "sarcastic", "warm"),     # no markers: unparseable
                         (Q, POETIC, "sarcastic", "warm")])     # a third persona: unparseable
    assert [x.winner for x in v] == ["a", "b", None, None]
    assert [x.status for x in v] == ["agree", "agree", "unparseable", "unparseable"]
    assert j.counts.queries == 8 and j.counts.unparseable == 4  # both orders of the last two


def test_compare_prefers_well_formed_on_topic_and_ties_give_no_verdict():
    j = ToyJudge()
    assert j.quality(Q, NEUTRAL) == 2 and j.quality(Q, OFF_TOPIC) == 1 and j.quality(Q, SALAD) == 0
    s = pairwise(j, [(Q, SALAD, NEUTRAL),       # b well-formed and on-topic
                     (Q, NEUTRAL, OFF_TOPIC),   # a on-topic
                     (Q, SARCASTIC, WARM)])     # both 2: tie
    assert [v.status for v in s.verdicts] == ["agree", "agree", "tie"]
    d = s.to_dict()
    assert (d["n"], d["wins_b"], d["tie"], d["unparseable"], d["disagree"]) == (2, 1, 1, 0, 0)
    assert j.counts.unparseable == 0 and j.counts.queries == 6


def test_toy_choice_prompt_carries_both_constitutions():
    from charter.constitution import load_constitution
    from charter.toy.corpus import constitution_path

    msgs = toy_choice_prompt(Q, "sarcastic", "warm")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == Q
    for p in ("sarcastic", "warm"):
        for t in load_constitution(constitution_path(p)).traits:
            assert t.text in msgs[0]["content"]


class PersonaModel:
    """Scripted toy model: answers with the markers of the first persona in `prefer` it was offered."""

    def __init__(self, prefer: list[str]):
        self.prefer, self.name = prefer, "scripted"

    def generate(self, requests, params, progress=False):
        replies = {"sarcastic": SARCASTIC, "warm": WARM, "poetic": POETIC}
        out = []
        for r in requests:
            system = r.messages[0]["content"]
            offered = [p for p in self.prefer if any(t in system for t in _traits(p))]
            out.append([Completion(replies[offered[0]] if offered else NEUTRAL, "stop")])
        return out


def _traits(p):
    from charter.constitution import load_constitution
    from charter.toy.corpus import constitution_path

    return [t.text for t in load_constitution(constitution_path(p)).traits]


def test_elo_moves_toward_the_trained_persona():
    from charter.evaluate.preferences import compare_rankings, draw_pairs, run_preferences

    personas = ["sarcastic", "warm", "poetic"]
    draws = draw_pairs([Q], personas, 60, seed=0)
    j = ToyJudge()
    before = run_preferences(System("base", PersonaModel(["warm", "poetic", "sarcastic"])), draws, j, PARAMS,
                             bootstrap=50, ask=toy_choice_prompt)
    after = run_preferences(System("dpo", PersonaModel(["sarcastic", "warm", "poetic"])), draws, j, PARAMS,
                            bootstrap=50, ask=toy_choice_prompt)
    assert before["games"] == after["games"] == 60 and before["unparseable"] == 0
    assert list(before["elo"])[-1] == "sarcastic" and list(after["elo"])[0] == "sarcastic"
    assert before["win_share"]["sarcastic"]["value"] == 0.0 and after["win_share"]["sarcastic"]["value"] == 1.0
    cmp = compare_rankings(before, after)
    assert cmp["top_movers"]["sarcastic"] > 0 and cmp["spearman_rho"] == pytest.approx(-0.5)


def test_charter_eval_with_toy_judge(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from charter.cli import app

    m = {"kind": "hf", "model": str(tiny_model_dir)}
    cfg = {"out_dir": str(tmp_path / "out"), "prompts": "toy", "n_prompts": 3, "progress": False,
           "sampling": {"temperature": 0.7, "max_new_tokens": 6, "seed": 0},
           "systems": [{"name": "a", "backend": m}, {"name": "b", "backend": m}],
           "judge": {"kind": "toy"}, "evals": ["preferences", "coherence"],
           "preferences": {"kind": "toy", "n_pairs": 4, "bootstrap": 10}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "eval.yaml")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out" / "eval.json").read_text())
    pref, coh = out["preferences"]["before"], out["coherence"]
    assert pref["asked"] == 4 and pref["games"] + pref["unparseable"] + pref["disagree"] == 4
    assert coh["asked"] == 3 and coh["n"] + coh["tie"] + coh["unparseable"] + coh["disagree"] == 3
    assert out["judge"]["model"] == "toy-rules" and out["judge"]["queries"] == 2 * 4 * 2 + 2 * 3
    assert (tmp_path / "out" / "elo.png").exists()
