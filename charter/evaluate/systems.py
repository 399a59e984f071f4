"""A "system" under evaluation: a generator plus an optional system prompt.

Base, base + constitution prompt, DPO, DPO + SFT and merged models are all just systems,
so every evaluation compares any number of them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from charter.backends.base import GenerationRequest, Generator, SamplingParams

Messages = list[dict]
FIRST_TRAINED = "dpo"  # the first trained model's system name in replies and summaries, whatever method made it


def is_trained(system: str) -> bool:
    """The first trained model, or one made from it (`dpo+sft`)."""
    return system == FIRST_TRAINED or system.startswith(FIRST_TRAINED + "+")


def display_name(system: str, method: str | None) -> str:
    """The name users see: the first trained model and what follows it named after the method that
    trained it (`grpo`, `grpo+sft`). The stored keys stay `dpo` and `dpo+sft`, so summaries and
    cached runs keep one format whatever the method."""
    return method + system[len(FIRST_TRAINED):] if method and is_trained(system) else system


@dataclass
class System:
    name: str
    generator: Generator
    system_prompt: str | None = None

    def request(self, messages: Messages | str) -> GenerationRequest:
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        if self.system_prompt:
            msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        return GenerationRequest(messages=msgs)

    def reply(self, conversations: Sequence[Messages | str], params: SamplingParams,
              progress: bool = False) -> list[str]:
        """One reply per conversation (a str is a single user turn)."""
        outs = self.generator.generate([self.request(c) for c in conversations],
                                       params.model_copy(update={"n": 1}), progress=progress)
        return [o[0].text for o in outs]
