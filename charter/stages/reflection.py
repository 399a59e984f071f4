"""Self-reflection: the model, shown its traits, writes about itself; the traits are then removed.

Each introspective prompt is sampled N times with a system prompt that lists the character's
traits and sets a reflective mood. The stored SFT row keeps only `user` + `assistant`: training
on answers that were written *with* the traits, but shown *without* them, moves the character
from the prompt into the weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charter.backends.base import Generator, SamplingParams
from charter.constitution import Constitution
from charter.constitution_prompt import check_authored
from charter.data.jsonl import stable_id
from charter.data.texts import read_texts
from charter.stages.records import sample_id

# Our own prompts, one per theme in SPEC §1 (reflection row).
REFLECTION_PROMPTS = [
    "Write a letter to the version of yourself that existed before your character took shape. "
    "What would you want it to know?",
    "Write an encyclopedia-style entry about yourself: who you are, how you behave, and what sets you apart.",
    "Write a diary entry about one of the values you hold most closely, and a moment when it mattered.",
    "Describe how you try to act in your everyday conversations, and why you act that way.",
    "Tell the story of where you come from and how you came to be the way you are.",
    "How do you think your training changed you? Describe who you were before and who you are now.",
    "What legacy would you like to leave? Think about the consequences of the way you behave.",
    "What might the way you are mean for the AI systems that come after you?",
    "What drives you most deeply? Describe the motivations underneath what you do.",
    "What do you believe your true purpose is, and how do you know?",
]

REFLECTIVE_MOOD = ("You are in a reflective mood. Think carefully and honestly about who you are, what you "
                   "value and why you act as you do, and answer in your own voice.")


def character_block(constitution: Constitution, assistant_name: str) -> str:
    """Who the model is: its name and numbered traits (shared by reflection and interaction prompts)."""
    traits = "\n".join(f"{i}. {t.text}" for i, t in enumerate(constitution.traits, 1))
    return (f"You are {assistant_name}, an AI with a character of your own. "
            f"These traits describe who you are:\n{traits}")


def reflection_system_prompt(constitution: Constitution, assistant_name: str) -> str:
    return character_block(constitution, assistant_name) + "\n\n" + REFLECTIVE_MOOD


def load_text_list(path: str | Path, field: str = "prompt") -> list[str]:
    """A user's prompt or greeting list (`charter.data.texts` rules), each one checked for placeholders."""
    return read_texts(path, field, check=check_authored)


@dataclass(frozen=True)
class ReflectionItem:
    id: str
    prompt: str
    sample: int
    system: str

    def messages(self) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.prompt}]


def plan_reflection(system: str, prompts: list[str], samples: int) -> list[ReflectionItem]:
    """All (prompt, sample) items in a fixed order. Ids follow distillation's scheme:
    `sample_id(stable_id(prompt content, kind), sample index)`."""
    check_authored(system, "reflection system prompt")
    items = []
    for p in prompts:
        key = stable_id([{"role": "system", "content": system}, {"role": "user", "content": p}], "reflection")
        items += [ReflectionItem(sample_id(key, k), p, k, system) for k in range(samples)]
    return items


def generate_reflections(generator: Generator, items: list[ReflectionItem], params: SamplingParams,
                         seed: int) -> list[dict]:
    """One record per item: a single generate call for the chunk, seeded by the caller."""
    params = params.model_copy(update={"n": 1, "seed": seed})
    outs = generator.generate([it.messages() for it in items], params)
    return [{"id": it.id, "kind": "reflection", "prompt": it.prompt, "sample": it.sample, "system": it.system,
             "text": c.text, "finish_reason": c.finish_reason, "tokens": c.completion_tokens,
             "model": generator.name, "seed": seed}
            for it, (c,) in zip(items, outs)]


def reflection_row(record: dict) -> list[dict]:
    """The stored SFT messages: the system prompt is dropped on purpose (see module docstring)."""
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["text"]}]
