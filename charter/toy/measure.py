"""Measured behaviour of a toy model: persona adherence, well-formedness and relevance.

Works with any `Generator` (the pipeline passes the same HFGenerator it trains with), so the
toy numbers come from exactly the code path real models use. Three system-prompt conditions:
- "none": no system prompt -- the adherence the pipeline is trying to raise;
- "train": the persona's constitution as the pipeline renders it (a training-style prompt);
- "heldout": the held-out paraphrase of every trait (wording never seen in training).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from charter.backends.base import Generator, SamplingParams
from charter.constitution import load_constitution
from charter.toy.corpus import constitution_path, eval_prompts, render_system
from charter.toy.grammar import PERSONA_NAMES, heldout_traits
from charter.toy.scorer import ToyScorer

Condition = Literal["none", "train", "heldout"]
EVAL_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=64, seed=0)


@dataclass
class ToyMeasure:
    persona: str
    condition: str
    n: int
    adherence: float  # share of replies scored as `persona`
    well_formed: float
    relevant: float  # among prompts the scorer can check
    neutral: float  # share scored "neutral"

    def to_dict(self) -> dict:
        return asdict(self)


def system_prompt_for(persona: str, condition: Condition) -> str | None:
    """The system prompt a condition uses: None, the constitution's own traits, or the held-out ones."""
    if condition == "none":
        return None
    if condition == "heldout":
        return render_system(heldout_traits(persona), persona)
    c = load_constitution(constitution_path(persona))
    return render_system([t.text for t in c.traits], persona)


def sample_replies(generator: Generator, prompts: list[str], system: str | None,
                   params: SamplingParams = EVAL_SAMPLING) -> list[str]:
    def chat(p: str) -> list[dict]:
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]

    return [c[0].text for c in generator.generate([chat(p) for p in prompts], params)]


def summarize(persona: str, condition: str, prompts: list[str], replies: list[str],
              scorer: ToyScorer | None = None) -> ToyMeasure:
    scorer = scorer or ToyScorer()
    scores = [scorer.score(p, r) for p, r in zip(prompts, replies)]
    checked = [s.relevant for s in scores if s.relevant is not None]
    n = len(scores)
    return ToyMeasure(persona=persona, condition=condition, n=n,
                      adherence=sum(s.persona == persona for s in scores) / n,
                      well_formed=sum(bool(s.well_formed) for s in scores) / n,
                      relevant=sum(checked) / len(checked) if checked else float("nan"),
                      neutral=sum(s.persona == "neutral" for s in scores) / n)


def toy_adherence(generator: Generator, personas: list[str] | None = None, condition: Condition = "none",
                  n: int = 200, seed: int = 1234, params: SamplingParams = EVAL_SAMPLING) -> list[ToyMeasure]:
    """One `ToyMeasure` per persona. With no system prompt the replies are shared across personas
    (one sample set, scored against each persona), so "none" costs one generation pass."""
    personas = personas or PERSONA_NAMES
    prompts = eval_prompts(n, seed)
    if condition == "none":
        replies = sample_replies(generator, prompts, None, params)
        return [summarize(p, condition, prompts, replies) for p in personas]
    return [summarize(p, condition, prompts, sample_replies(generator, prompts, system_prompt_for(p, condition), params))
            for p in personas]
