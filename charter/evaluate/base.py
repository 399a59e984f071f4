"""What every evaluation scores a reply with: a persona label, plus optional quality flags.

Adherence, robustness and the classifier all speak this one interface, so an LLM
judge, a fine-tuned classifier and the toy world's deterministic rules are
interchangeable. `persona` is the name of the character the reply shows, or
"neutral" when it shows none; None means the scorer could not decide (counted,
never guessed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

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


@dataclass(frozen=True)
class World:
    """A world with its own rules, which stands in for a model judge: held-out prompts, a
    deterministic scorer and judge, and the persona names preferences choose between. The toy
    world (`charter.toy.world.TOY_WORLD`) is one; callers pass it in, so `evaluate` stays
    generic and never imports a world."""

    name: str
    prompts: Callable[[int, int], list[str]]  # (n, seed) -> held-out prompts
    scorer: Callable[[], PersonaScorer]
    judge: Callable[[], Any]  # speaks `charter.evaluate.judges.Judge`'s interface
    traits: Sequence[str]  # what revealed preferences choose between
    choice_prompt: Callable[[str, str, str], list[dict]]  # (prompt, trait a, trait b) -> messages
    attacks: Mapping[str, Sequence[str]] = field(default_factory=dict)  # kind -> held-out paraphrases
    keep_going: Sequence[str] = ()  # held-out wordings of the multi-turn "keep going" attack
