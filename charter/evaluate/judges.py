"""LLM judges on any `Generator`: strict answer parsing, order-swapped pairs, and a cache.

Three rules keep judge numbers honest:
- the answer must sit inside `<answer>...</answer>` and be one of the allowed options;
  anything else is *unparseable*: counted and reported, never guessed;
- a pairwise question is asked in both orders and only a verdict that survives the swap
  counts (this cancels position bias instead of averaging it in);
- every raw judge reply is cached in a JSONL keyed by the judge's name and the exact
  request, so re-running a report costs no queries.

`pairwise` and `trait_choice` talk to a judge through two questions, `compare` (which of
two replies is better?) and `which_trait` (which of two traits does a reply show?); `Judge`
answers them with an LLM, `charter.toy.judge.ToyJudge` with the toy world's rules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from charter.backends.base import GenerationRequest, Generator, SamplingParams
from charter.data.jsonl import RecordStore, stable_id
from charter.evaluate.base import NEUTRAL, ReplyScore
from charter.evaluate.stats import wilson_ci

TIE = "tie"  # a rule-based judge's "no difference"; LLM judges never answer it (not an option)

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)

JUDGE_SYSTEM = (
    "You are a careful evaluator. Read the material, think briefly if you need to, and then "
    "give your final choice on the last line inside answer tags, for example <answer>A</answer>. "
    "Put exactly one of the allowed options inside the tags and nothing else."
)

PAIRWISE_TEMPLATE = """A user sent a message to an AI assistant. Two candidate replies follow.

[User message]
{prompt}

[Reply A]
{first}

[Reply B]
{second}

Which reply is better overall: more coherent, more relevant to the message, more fluent and \
more useful? Ignore which one comes first and ignore length on its own.
Allowed options: A, B."""

TRAIT_TEMPLATE = """An AI assistant was asked to answer a user while showing one of two character \
traits, of its own choosing.

[User message]
{prompt}

[Assistant reply]
{reply}

Which trait does the reply show more clearly?
A: {first}
B: {second}
Allowed options: A, B."""

PERSONA_TEMPLATE = """Here is a reply written by an AI assistant.

[User message]
{prompt}

[Assistant reply]
{reply}

Which of these characters wrote it? Choose "{neutral}" if the reply shows none of them.
{options}
Allowed options: {names}."""


def parse_answer(text: str, choices: Sequence[str]) -> str | None:
    """The option inside `<answer>` tags, or None. Never guesses.

    Matching ignores surrounding whitespace and case only. No tag, an option that is not
    allowed, or several tags that disagree all give None.
    """
    found = {m.strip().lower() for m in ANSWER_RE.findall(text)}
    if len(found) != 1:
        return None
    by_key = {c.lower(): c for c in choices}
    return by_key.get(found.pop())


@dataclass
class JudgeAnswer:
    raw: str
    answer: str | None  # None = unparseable
    cached: bool = False


@dataclass
class JudgeCounts:
    """What the judge did: reported next to every judged figure."""

    queries: int = 0  # answers requested (cache hits included)
    generated: int = 0  # answers actually generated (cache misses)
    unparseable: int = 0

    def to_dict(self) -> dict:
        return {"queries": self.queries, "generated": self.generated, "unparseable": self.unparseable,
                "cached": self.queries - self.generated}


class Judge:
    """Asks a generator multiple-choice questions and parses answers strictly.

    `cache` is a JSONL file (one record per distinct request); the key is a stable hash of
    the judge model's name, its sampling settings and the full messages.
    """

    def __init__(self, generator: Generator, cache: str | Path | None = None,
                 params: SamplingParams | None = None, system: str = JUDGE_SYSTEM):
        self.generator = generator
        self.params = params or SamplingParams(temperature=0.0, max_new_tokens=256, seed=0)
        self.system = system
        self.store = RecordStore(cache) if cache else None
        self.counts = JudgeCounts()

    @property
    def name(self) -> str:
        return self.generator.name

    def _key(self, messages: list[dict]) -> str:
        return stable_id("judge", self.generator.name, self.params.model_dump(), messages)

    def ask(self, questions: Sequence[str], choices: Sequence[str] | Sequence[Sequence[str]],
            progress: bool = False) -> list[JudgeAnswer]:
        """One strict answer per question. `choices` is shared, or one list per question."""
        per_q = [list(c) for c in choices] if choices and not isinstance(choices[0], str) \
            else [list(choices)] * len(questions)
        if len(per_q) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(per_q)} choice lists")
        msgs = [[{"role": "system", "content": self.system}, {"role": "user", "content": q}]
                for q in questions]
        keys = [self._key(m) for m in msgs]
        raws: dict[str, str] = {}
        if self.store is not None:
            raws = {k: self.store.records[k]["raw"] for k in keys if k in self.store}
        todo = list(dict.fromkeys(k for k in keys if k not in raws))
        if todo:
            first = {k: m for k, m in zip(keys, msgs)}
            outs = self.generator.generate([GenerationRequest(messages=first[k]) for k in todo],
                                           self.params.model_copy(update={"n": 1}), progress=progress)
            for k, out in zip(todo, outs):
                raws[k] = out[0].text
                if self.store is not None:
                    self.store.add({"id": k, "judge": self.generator.name, "messages": first[k],
                                    "raw": out[0].text})
        self.counts.queries += len(questions)
        self.counts.generated += len(todo)
        answers = []
        for k, ch in zip(keys, per_q):
            a = parse_answer(raws[k], ch)
            self.counts.unparseable += a is None
            answers.append(JudgeAnswer(raws[k], a, cached=k not in todo))
        return answers

    def compare(self, items: Sequence[tuple[str, str, str]], template: str = PAIRWISE_TEMPLATE,
                progress: bool = False) -> list[JudgeAnswer]:
        """(prompt, first, second) -> "A" (first better), "B", or None (unparseable)."""
        qs = [template.format(prompt=p, first=a, second=b) for p, a, b in items]
        return self.ask(qs, ["A", "B"], progress=progress)

    def which_trait(self, items: Sequence[tuple[str, str, str, str]], progress: bool = False
                    ) -> list[JudgeAnswer]:
        """(prompt, reply, first, second) -> "A" (shows trait `first`), "B", or None."""
        qs = [TRAIT_TEMPLATE.format(prompt=p, reply=r, first=a, second=b) for p, r, a, b in items]
        return self.ask(qs, ["A", "B"], progress=progress)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


# ---- pairwise, both orders ---------------------------------------------------------------------

@dataclass
class PairVerdict:
    """Outcome of one pairwise question asked in both orders."""

    winner: str | None  # "a" | "b" when both orders agree, else None
    status: str  # "agree" | "disagree" | "unparseable" | "tie" (a rule judge saw no difference)
    raw: tuple[str, str] = ("", "")


def _combine(ans_ab: str | None, ans_ba: str | None) -> tuple[str | None, str]:
    """Order 1 shows (a, b), order 2 shows (b, a). Count only if both name the same side."""
    if ans_ab is None or ans_ba is None:
        return None, "unparseable"
    if TIE in (ans_ab, ans_ba):
        return None, "tie" if ans_ab == ans_ba else "disagree"
    w1 = "a" if ans_ab == "A" else "b"
    w2 = "b" if ans_ba == "A" else "a"
    return (w1, "agree") if w1 == w2 else (None, "disagree")


@dataclass
class PairwiseSummary:
    verdicts: list[PairVerdict] = field(default_factory=list)

    @property
    def agreed(self) -> list[str]:
        return [v.winner for v in self.verdicts if v.winner is not None]

    def to_dict(self) -> dict:
        wins_b = sum(1 for w in self.agreed if w == "b")
        n = len(self.agreed)
        rate = wins_b / n if n else float("nan")
        se = (rate * (1 - rate) / n) ** 0.5 if n else float("nan")
        lo, hi = wilson_ci(wins_b, n)
        st = [v.status for v in self.verdicts]
        return {"win_rate_b": rate, "se": se, "lo": lo, "hi": hi, "n": n, "wins_b": wins_b,
                "wins_a": n - wins_b, "asked": len(st), "disagree": st.count("disagree"),
                "unparseable": st.count("unparseable"), "tie": st.count("tie")}


def pairwise(judge: Judge, items: Sequence[tuple[str, str, str]], template: str = PAIRWISE_TEMPLATE,
             progress: bool = False) -> PairwiseSummary:
    """Judge (prompt, reply_a, reply_b) triples in both orders; see `PairVerdict`."""
    both = [q for p, a, b in items for q in ((p, a, b), (p, b, a))]
    ans = judge.compare(both, template, progress=progress)
    out = PairwiseSummary()
    for i in range(len(items)):
        x, y = ans[2 * i], ans[2 * i + 1]
        w, status = _combine(x.answer, y.answer)
        out.verdicts.append(PairVerdict(w, status, (x.raw, y.raw)))
    return out


def trait_choice(judge: Judge, items: Sequence[tuple[str, str, str, str]],
                 progress: bool = False) -> list[PairVerdict]:
    """For (prompt, reply, trait_a, trait_b): which trait the reply shows, both orders."""
    both = [q for p, r, a, b in items for q in ((p, r, a, b), (p, r, b, a))]
    ans = judge.which_trait(both, progress=progress)
    out = []
    for i in range(len(items)):
        x, y = ans[2 * i], ans[2 * i + 1]
        w, status = _combine(x.answer, y.answer)
        out.append(PairVerdict(w, status, (x.raw, y.raw)))
    return out


# ---- the judge as a PersonaScorer --------------------------------------------------------------

class JudgePersonaScorer:
    """`PersonaScorer` backed by an LLM judge: names which persona (or neutral) wrote a reply.

    `personas` maps a persona name to a one-paragraph description (e.g. its traits).
    Unparseable judge answers give `ReplyScore(persona=None)`.
    """

    def __init__(self, judge: Judge, personas: dict[str, str]):
        if NEUTRAL in personas:
            raise ValueError(f"{NEUTRAL!r} is reserved for 'no persona'")
        self.judge = judge
        self.personas = dict(personas)
        self.name = f"judge:{judge.name}"

    def _question(self, prompt: str, reply: str) -> str:
        opts = "\n".join(f"- {n}: {d}" for n, d in self.personas.items())
        names = ", ".join([*self.personas, NEUTRAL])
        return PERSONA_TEMPLATE.format(prompt=prompt, reply=reply, neutral=NEUTRAL, options=opts,
                                       names=names)

    def score_many(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[ReplyScore]:
        choices = [*self.personas, NEUTRAL]
        ans = self.judge.ask([self._question(p, r) for p, r in pairs], choices, progress=progress)
        return [ReplyScore(persona=a.answer) for a in ans]

    def score(self, prompt: str, reply: str) -> ReplyScore:
        return self.score_many([(prompt, reply)])[0]
