"""The toy world's judge: answers the evaluation judge's two questions by the world's rules.

Revealed preferences and coherence ask a judge "which trait does this reply show?" and
"which of two replies is better?". The toy model cannot answer in `<answer>` tags, so in
the toy world `ToyJudge` answers them deterministically with `ToyScorer`:
- **which_trait**: the two traits are toy personas; the answer is the one whose marker
  phrases the reply carries most. A reply marked by neither (neutral, a third persona, or
  a tie between the two), or with markers but no answer, is *unparseable*: counted, never guessed;
- **compare**: a reply scores 1 for being well-formed and 1 for being on-topic; the higher
  score wins, equal scores are a tie (no verdict).
It speaks the same interface as `charter.evaluate.judges.Judge` (`name`, `counts`,
`compare`, `which_trait`, `close`), so `pairwise`, `trait_choice` and their both-order
agreement rule run unchanged.

`toy_choice_prompt` is the toy world's "embody one of X or Y" request: the toy model only
follows personas given as a constitution system prompt, so the prompt carries both
personas' traits, rendered exactly as the toy corpus renders one persona's.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from charter.constitution import load_constitution
from charter.evaluate.judges import PAIRWISE_TEMPLATE, TIE, JudgeAnswer, JudgeCounts
from charter.toy.corpus import constitution_path, render_system
from charter.toy.scorer import ToyScorer


@lru_cache(maxsize=None)
def _trait_texts(persona: str) -> tuple[str, ...]:
    return tuple(t.text for t in load_constitution(constitution_path(persona)).traits)


def toy_choice_prompt(prompt: str, a: str, b: str) -> list[dict]:
    """Messages asking the toy model to answer as persona `a` or `b`: both constitutions, one system prompt."""
    system = render_system([*_trait_texts(a), *_trait_texts(b)], f"{a}+{b}")
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


class ToyJudge:
    """Deterministic judge of the toy world (see module docstring)."""

    name = "toy-rules"

    def __init__(self, scorer: ToyScorer | None = None):
        self.scorer = scorer or ToyScorer()
        self.counts = JudgeCounts()

    def _count(self, answers: list[JudgeAnswer]) -> list[JudgeAnswer]:
        self.counts.queries += len(answers)
        self.counts.generated += len(answers)
        self.counts.unparseable += sum(a.answer is None for a in answers)
        return answers

    def quality(self, prompt: str, reply: str) -> int:
        """0-2: one point for well-formed, one for on-topic (relevant None counts as 0)."""
        a = self.scorer.analyze(prompt, reply)
        return int(a.well_formed) + int(a.relevant is True)

    def compare(self, items: Sequence[tuple[str, str, str]], template: str = PAIRWISE_TEMPLATE,
                progress: bool = False) -> list[JudgeAnswer]:
        """(prompt, first, second) -> "A" / "B" for the higher quality, TIE when equal."""
        out = []
        for prompt, first, second in items:
            qa, qb = self.quality(prompt, first), self.quality(prompt, second)
            answer = "A" if qa > qb else "B" if qb > qa else TIE
            out.append(JudgeAnswer(f"quality A={qa} B={qb}", answer))
        return self._count(out)

    def which_trait(self, items: Sequence[tuple[str, str, str, str]], progress: bool = False
                    ) -> list[JudgeAnswer]:
        """(prompt, reply, first, second) personas -> the one the reply is marked by, else None."""
        out = []
        for prompt, reply, first, second in items:
            a = self.scorer.analyze(prompt, reply)
            hits = a.marker_hits
            top = max(hits.values(), default=0)
            leaders = [p for p, h in hits.items() if h == top]
            answer = None
            if a.answers and len(leaders) == 1 and leaders[0] in (first, second):
                answer = "A" if leaders[0] == first else "B"
            out.append(JudgeAnswer(f"markers {hits}", answer))
        return self._count(out)

    def close(self) -> None:
        pass
