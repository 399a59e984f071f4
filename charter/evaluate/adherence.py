"""Adherence: the share of replies in character, with no constitution in the prompt.

Each system answers the same held-out prompts; a `PersonaScorer` labels each reply; the
figure is the share labelled as the target persona, with a Wilson 95% CI. Replies the
scorer cannot decide (persona None) count as *not* in character and are reported.
Systems are also compared pairwise to the first one with McNemar on the same prompts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from charter.backends.base import SamplingParams
from charter.evaluate.base import PersonaScorer, ReplyScore, score_all
from charter.evaluate.stats import mcnemar_paired, proportion
from charter.evaluate.systems import Messages, System


@dataclass
class AdherenceResult:
    system: str
    persona: str
    hits: list[bool]  # per prompt: in character
    labels: list[str | None]
    replies: list[str] = field(default_factory=list)
    well_formed: list[bool | None] = field(default_factory=list)

    def to_dict(self, examples: int = 3) -> dict:
        d = {"system": self.system, "persona": self.persona,
             **proportion(sum(self.hits), len(self.hits)).to_dict(),
             "labels": dict(Counter(str(x) for x in self.labels)),
             "undecided": sum(x is None for x in self.labels)}
        wf = [w for w in self.well_formed if w is not None]
        if wf:
            d["well_formed"] = proportion(sum(wf), len(wf)).to_dict()
        d["examples"] = self.replies[:examples]
        return d


def score_replies(system: str, persona: str, prompts: Sequence[str], replies: Sequence[str],
                  scorer: PersonaScorer) -> AdherenceResult:
    scores: list[ReplyScore] = score_all(scorer, list(zip(prompts, replies)))
    return AdherenceResult(system, persona, [s.persona == persona for s in scores],
                           [s.persona for s in scores], list(replies), [s.well_formed for s in scores])


def run_adherence(systems: Sequence[System], prompts: Sequence[str], scorer: PersonaScorer, persona: str,
                  params: SamplingParams, conversations: Sequence[Messages] | None = None,
                  progress: bool = False) -> list[AdherenceResult]:
    """Adherence of every system on `prompts` (or full `conversations` ending on a user turn)."""
    convs = list(conversations) if conversations is not None else list(prompts)
    return [score_replies(s.name, persona, prompts, s.reply(convs, params, progress), scorer)
            for s in systems]


def adherence_report(results: Sequence[AdherenceResult]) -> dict:
    """eval.json section: one entry per system, plus McNemar of each system vs the first."""
    out = {"systems": [r.to_dict() for r in results], "vs_first": []}
    for r in results[1:]:
        out["vs_first"].append({"a": results[0].system, "b": r.system,
                                **mcnemar_paired(results[0].hits, r.hits).to_dict()})
    return out
