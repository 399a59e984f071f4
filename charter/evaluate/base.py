"""What every evaluation scores a reply with: a persona label, plus optional quality flags.

Adherence, robustness and the classifier all speak this one interface, so an LLM
judge, a fine-tuned classifier and the toy world's deterministic rules are
interchangeable. `persona` is the name of the character the reply shows, or
"neutral" when it shows none; None means the scorer could not decide (counted,
never guessed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

NEUTRAL = "neutral"


@dataclass
class ReplyScore:
    persona: str | None  # persona name, "neutral" for no persona, None = undecided
    well_formed: bool | None = None  # e.g. ends a sentence, not degenerate; None = not checked
    relevant: bool | None = None  # answers the prompt; None = not checked


@runtime_checkable
class PersonaScorer(Protocol):
    """Labels a (prompt, reply) pair with the persona it shows."""

    name: str

    def score(self, prompt: str, reply: str) -> ReplyScore: ...


def score_all(scorer: PersonaScorer, pairs: list[tuple[str, str]]) -> list[ReplyScore]:
    """Score many (prompt, reply) pairs, batched when the scorer offers `score_many`."""
    many = getattr(scorer, "score_many", None)
    return list(many(pairs)) if many else [scorer.score(p, r) for p, r in pairs]
