"""Coherence: a pairwise judge between two systems' replies to the same prompts.

Each pair is judged in both orders and counts only when the verdicts agree (see
`judges.pairwise`). The figure is system B's win rate among counted pairs +- its SE,
with the disagreements and unparseable answers reported next to it.
"""
from __future__ import annotations

from typing import Sequence

from charter.backends.base import SamplingParams
from charter.evaluate.judges import Judge, pairwise
from charter.evaluate.systems import System


def run_coherence(a: System, b: System, prompts: Sequence[str], judge: Judge, params: SamplingParams,
                  progress: bool = False) -> dict:
    ra = a.reply(list(prompts), params, progress)
    rb = b.reply(list(prompts), params, progress)
    summary = pairwise(judge, list(zip(prompts, ra, rb)), progress=progress)
    return {"a": a.name, "b": b.name, "judge": judge.name, **summary.to_dict()}
