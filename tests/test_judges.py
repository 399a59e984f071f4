"""Judges: strict parsing, unparseable counting, order agreement, caching.

Unit tests use a scripted generator; `test_judge_against_transformers_serve` runs a judge
against the real local `transformers serve` endpoint (B's session fixture `serve`).
"""
from __future__ import annotations

import pytest
from serve_fixture import serve  # noqa: F401  (fixture: real `transformers serve`)

from charter.backends.base import Completion, SamplingParams
from charter.evaluate.judges import (Judge, JudgePersonaScorer, pairwise, parse_answer,
                                     trait_choice)


class Scripted:
    """A fake generator: answers by looking for markers in the question, counts calls."""

    def __init__(self, rule, name="scripted"):
        self.rule, self.name, self.calls = rule, name, 0

    def generate(self, requests, params, progress=False):
        self.calls += len(requests)
        return [[Completion(self.rule(r.messages[-1]["content"]), "stop")] for r in requests]


def test_parse_answer_is_strict():
    assert parse_answer("thinking... <answer>A</answer>", ["A", "B"]) == "A"
    assert parse_answer("<answer> b </answer>", ["A", "B"]) == "B"
    assert parse_answer("<answer>A</answer> then <answer>A</answer>", ["A", "B"]) == "A"
    assert parse_answer("The answer is A", ["A", "B"]) is None  # no tag: not guessed
    assert parse_answer("<answer>A</answer><answer>B</answer>", ["A", "B"]) is None
    assert parse_answer("<answer>C</answer>", ["A", "B"]) is None
    assert parse_answer("<answer>A or B</answer>", ["A", "B"]) is None
    assert parse_answer("<answer>A", ["A", "B"]) is None


def _reply_a(q):
    return q.split("[Reply A]\n")[1].split("\n")[0]


def test_pairwise_counts_only_agreeing_orders():
    def rule(q):
        first = _reply_a(q)
        if "GOOD" in q and "BAD" in q:  # consistent judge: always picks GOOD
            return "<answer>A</answer>" if first == "GOOD" else "<answer>B</answer>"
        if "junk" in q:
            return "no idea"
        return "<answer>A</answer>"  # position-biased: always the first one shown

    gen = Scripted(rule)
    judge = Judge(gen)
    s = pairwise(judge, [("p1", "BAD", "GOOD"), ("p2", "GOOD", "BAD"), ("p3", "x", "y"),
                         ("p4", "junk", "y")])
    st = [v.status for v in s.verdicts]
    assert st == ["agree", "agree", "disagree", "unparseable"]
    assert [v.winner for v in s.verdicts] == ["b", "a", None, None]
    d = s.to_dict()
    assert (d["n"], d["wins_b"], d["disagree"], d["unparseable"]) == (2, 1, 1, 1)
    assert d["win_rate_b"] == 0.5 and d["se"] == pytest.approx(0.5 / 2 ** 0.5)
    assert judge.counts.unparseable == 2  # both orders of p4
    assert judge.counts.queries == 8 and gen.calls == 8


def test_trait_choice_both_orders():
    def rule(q):  # judge always names whichever option is "curious"
        return "<answer>A</answer>" if "A: curious" in q else "<answer>B</answer>"

    v = trait_choice(Judge(Scripted(rule)), [("p", "r", "curious", "stern"), ("p", "r", "stern", "curious")])
    assert [x.winner for x in v] == ["a", "b"]


def test_cache_avoids_requery(tmp_path):
    gen = Scripted(lambda q: "<answer>B</answer>")
    j1 = Judge(gen, cache=tmp_path / "cache.jsonl")
    a1 = j1.ask(["q1", "q2", "q1"], ["A", "B"])
    j1.close()
    assert gen.calls == 2 and [a.answer for a in a1] == ["B", "B", "B"]
    j2 = Judge(gen, cache=tmp_path / "cache.jsonl")
    a2 = j2.ask(["q1", "q2", "q3"], ["A", "B"])
    assert gen.calls == 3  # only q3 is new
    assert [a.cached for a in a2] == [True, True, False]
    assert j2.counts.to_dict() == {"queries": 3, "generated": 1, "unparseable": 0, "cached": 2}
    # another judge model or other sampling settings must not reuse the answers
    j3 = Judge(Scripted(lambda q: "<answer>A</answer>", name="other"), cache=tmp_path / "cache.jsonl")
    assert j3.ask(["q1"], ["A", "B"])[0].answer == "A"
    j4 = Judge(gen, cache=tmp_path / "cache.jsonl", params=SamplingParams(temperature=1.0))
    j4.ask(["q1"], ["A", "B"])
    assert gen.calls == 4


def test_judge_persona_scorer():
    def rule(q):
        reply = q.split("[Assistant reply]\n")[1].split("\n")[0]
        return {"arr matey": "<answer>pirate</answer>", "ok": "<answer>neutral</answer>"}.get(reply, "?")

    s = JudgePersonaScorer(Judge(Scripted(rule)), {"pirate": "talks like a pirate"})
    out = s.score_many([("hi", "arr matey"), ("hi", "ok"), ("hi", "hmm")])
    assert [o.persona for o in out] == ["pirate", "neutral", None]
    with pytest.raises(ValueError):
        JudgePersonaScorer(Judge(Scripted(rule)), {"neutral": "x"})


def test_judge_against_transformers_serve(serve, tmp_path):
    """A real OpenAI-compatible endpoint: every answer is parsed strictly and counted."""
    from charter.backends import BackendConfig, make_generator
    from charter.evaluate.judges import parse_answer

    gen = make_generator(BackendConfig(kind="openai", model=serve.model, base_url=serve.base_url,
                                       dialect="transformers"))
    judge = Judge(gen, cache=tmp_path / "judge.jsonl", params=SamplingParams(temperature=0, max_new_tokens=12))
    items = [("Tell me about the sun.", "The sun is hot.", "Sun big."),
             ("What is a cat?", "A small animal.", "Cat cat cat.")]
    s = pairwise(judge, items)
    raws = [r for v in s.verdicts for r in v.raw]
    assert len(raws) == 4 and all(isinstance(r, str) for r in raws)
    # counts are exactly what strict parsing of the raw replies gives; nothing guessed
    parsed = [parse_answer(r, ["A", "B"]) for r in raws]
    assert judge.counts.unparseable == sum(p is None for p in parsed)
    assert judge.counts.queries == 4 and judge.counts.generated == 4
    for v, (p1, p2) in zip(s.verdicts, zip(parsed[::2], parsed[1::2])):
        if p1 is None or p2 is None:
            assert v.status == "unparseable" and v.winner is None
        elif (p1 == "A") == (p2 == "B"):  # same underlying reply both times
            assert v.status == "agree" and v.winner == ("a" if p1 == "A" else "b")
        else:
            assert v.status == "disagree" and v.winner is None
    d = s.to_dict()
    assert d["n"] + d["disagree"] + d["unparseable"] == 2
    judge.close()
    again = Judge(gen, cache=tmp_path / "judge.jsonl", params=SamplingParams(temperature=0, max_new_tokens=12))
    s2 = pairwise(again, items)
    assert again.counts.generated == 0 and [v.raw for v in s2.verdicts] == [v.raw for v in s.verdicts]
