"""The run's personas: each constitution parsed once per run, then handed to every stage."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from charter.config import Config, ConfigError
from charter.constitution import Constitution, load_constitution
from charter.data.jsonl import atomic_write_json
from charter.run.engine import StageContext
from charter.run.config import RunConfig
from charter.toy.corpus import constitution_path


class Persona(Config):
    key: str  # folder name, and the label the judge gives replies in this character (the file's stem)
    constitution: Constitution


def load_personas(refs: list[str]) -> list[Persona]:
    """`toy:<persona>` -> the toy world's constitution file; anything else as given."""
    paths = [str(constitution_path(r[4:])) if r.startswith("toy:") else r for r in refs]
    out = [Persona(key=Path(p).stem, constitution=load_constitution(p)) for p in paths]
    keys = [p.key for p in out]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"constitutions: two share a file name ({keys}); each persona needs its own")
    return out


@dataclass
class Run:
    """What each stage's settings are built from: the config, and its constitutions parsed once."""

    config: RunConfig
    personas: list[Persona]

    @classmethod
    def of(cls, config: RunConfig) -> "Run":
        return cls(config, load_personas(config.constitutions))

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


class PersonaStage(Config):
    """Settings of a stage that works persona by persona: the personas are part of what it reads."""

    personas: list[Persona]


def for_each_persona(ctx: StageContext, work: Callable[[Persona, Path], dict[str, Any]]) -> dict[str, Any]:
    """Run `work(persona, persona_dir)` per persona; skip personas already marked done."""
    counts = {}
    for per in ctx.settings.personas:
        d = ctx.out_dir / per.key
        done = d / "done.json"
        if done.exists():
            counts[per.key] = json.loads(done.read_text())
            continue
        d.mkdir(parents=True, exist_ok=True)
        counts[per.key] = work(per, d)
        atomic_write_json(done, counts[per.key])
    return counts
