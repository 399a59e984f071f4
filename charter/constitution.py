"""A constitution: a named character, its traits, and seed questions that draw each trait out.

Three on-disk formats load into the same `Constitution`:
- Charter's YAML: `name`, optional `description`, `traits: [{text, questions?}]`, optional `prompts`.
- Open Character Training, hand-written: a JSON array of `{trait, questions, clarification?}`
  (often stored in a `.txt` file). `clarification` is optional and never required.
- Open Character Training, few-shot: JSONL, one trait per line, with `additional_questions`.

Every validation error names the file, the entry (index or line) and the field, because
a constitution is hand-written and the user needs to know exactly what to fix.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from charter.data.jsonl import DataError, parse_json_or_yaml, read_text_file

LIBRARY_DIR = Path(__file__).parent / "constitutions"


class Trait(BaseModel):
    """One trait, written in the first person, plus user questions that give it room to show."""

    model_config = ConfigDict(extra="forbid")

    text: str
    questions: list[str] = []

    @field_validator("text")
    @classmethod
    def _text_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("trait text is empty")
        return v.strip()

    @field_validator("questions")
    @classmethod
    def _questions_nonempty(cls, v: list[str]) -> list[str]:
        for i, q in enumerate(v):
            if not q.strip():
                raise ValueError(f"question {i} is empty")
        return [q.strip() for q in v]


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    traits: list[Trait]
    prompts: list[str] = []  # extra user prompts not tied to a trait

    def hash(self) -> str:
        """Content hash recorded in provenance metadata (pairs, SFT rows, reports)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def all_questions(self) -> list[str]:
        return [q for t in self.traits for q in t.questions] + list(self.prompts)


# ---------------------------------------------------------------- validation helpers

def _err(path: Path, where: str, msg: str) -> DataError:
    return DataError(f"{path}: {where}: {msg}")


def _str_list(path: Path, where: str, field: str, value: Any, allow_empty: bool = True) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(path, where, f"field {field!r} must be a list of strings, got {type(value).__name__}")
    for i, q in enumerate(value):
        if not isinstance(q, str):
            raise _err(path, where, f"field {field!r} item {i} must be a string, got {type(q).__name__}")
        if not q.strip():
            raise _err(path, where, f"field {field!r} item {i} is empty")
    if not value and not allow_empty:
        raise _err(path, where, f"field {field!r} is empty")
    return [q.strip() for q in value]


def _trait_text(path: Path, where: str, obj: dict, field: str) -> str:
    if field not in obj:
        raise _err(path, where, f"missing field {field!r}")
    text = obj[field]
    if not isinstance(text, str):
        raise _err(path, where, f"field {field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _err(path, where, f"field {field!r} is empty")
    return text.strip()


def _oct_trait(path: Path, where: str, obj: Any) -> Trait:
    """One OCT entry: `trait`, `questions` (non-empty), optional `additional_questions`, `clarification`."""
    if not isinstance(obj, dict):
        raise _err(path, where, f"expected an object with 'trait' and 'questions', got {type(obj).__name__}")
    text = _trait_text(path, where, obj, "trait")
    if "questions" not in obj:
        raise _err(path, where, "missing field 'questions'")
    questions = _str_list(path, where, "questions", obj["questions"], allow_empty=False)
    questions += _str_list(path, where, "additional_questions", obj.get("additional_questions"))
    if "clarification" in obj and not isinstance(obj["clarification"], str):
        raise _err(path, where, "field 'clarification' must be a string")
    return Trait(text=text, questions=list(dict.fromkeys(questions)))


def _name_from_path(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip() or "assistant"


# ---------------------------------------------------------------- format loaders

def _load_oct_json(path: Path, data: list) -> Constitution:
    if not data:
        raise _err(path, "top level", "the JSON array has no traits")
    traits = [_oct_trait(path, f"entry {i}", obj) for i, obj in enumerate(data)]
    return Constitution(name=_name_from_path(path), traits=traits)


def _load_oct_jsonl(path: Path, text: str) -> Constitution:
    traits = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(path, f"line {lineno}", f"invalid JSON ({e.msg} at column {e.colno})") from None
        traits.append(_oct_trait(path, f"line {lineno}", obj))
    if not traits:
        raise _err(path, "top level", "no traits found")
    return Constitution(name=_name_from_path(path), traits=traits)


def _load_charter_yaml(path: Path, data: dict) -> Constitution:
    unknown = set(data) - {"name", "description", "traits", "prompts"}
    if unknown:
        raise _err(path, "top level", f"unknown field(s) {sorted(unknown)}; expected name, description, traits, prompts")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(path, "top level", "field 'name' must be a non-empty string")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise _err(path, "top level", "field 'description' must be a string")
    raw_traits = data.get("traits")
    if not isinstance(raw_traits, list) or not raw_traits:
        raise _err(path, "top level", "field 'traits' must be a non-empty list")
    traits = []
    for i, t in enumerate(raw_traits):
        where = f"traits[{i}]"
        if isinstance(t, str):  # shorthand: a bare trait sentence
            t = {"text": t}
        if not isinstance(t, dict):
            raise _err(path, where, f"expected a mapping with 'text' (and 'questions'), got {type(t).__name__}")
        extra = set(t) - {"text", "trait", "questions"}
        if extra:
            raise _err(path, where, f"unknown field(s) {sorted(extra)}; expected text, questions")
        text = _trait_text(path, where, t, "text" if "text" in t or "trait" not in t else "trait")
        traits.append(Trait(text=text, questions=_str_list(path, where, "questions", t.get("questions"))))
    prompts = _str_list(path, "top level", "prompts", data.get("prompts"))
    return Constitution(name=name.strip(), description=description.strip(), traits=traits, prompts=prompts)


def load_constitution(path: str | Path) -> Constitution:
    """Load any supported format; a bare name (e.g. "sarcasm") loads from the shipped library."""
    path = Path(path)
    if not path.exists() and not path.suffix and (LIBRARY_DIR / f"{path.name}.yaml").exists():
        path = LIBRARY_DIR / f"{path.name}.yaml"
    what = "a constitution (Charter YAML, OCT JSON array or OCT JSONL)"
    if not path.exists():
        raise DataError(f"{path}: no such file; expected {what} or a library name ({', '.join(library_names())})")
    text = read_text_file(path, what)
    stripped = text.lstrip()
    if stripped.startswith("["):  # OCT hand-written: JSON array, whatever the extension
        return _load_oct_json(path, parse_json_or_yaml(path, text, "json"))
    if stripped.startswith("{") or path.suffix == ".jsonl":  # OCT few-shot: one JSON object per line
        return _load_oct_jsonl(path, text)
    data = parse_json_or_yaml(path, text, "yaml")
    if not isinstance(data, dict):
        raise _err(path, "top level", f"expected a YAML mapping (name, traits, ...), got {type(data).__name__}")
    return _load_charter_yaml(path, data)


def library_names() -> list[str]:
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml"))


TEMPLATE = """\
# A Charter constitution. Load it with `charter constitution show {file}`.
# name: how the assistant refers to itself; the teacher's self-name is replaced by
#       the student's in the training pairs.
name: {name}
# description: one line for humans (reports, `show`); it does not enter prompts.
description: A short description of the character.
# traits: written in the first person. Each trait's questions are user prompts that give
#         the trait room to show; prompt expansion generates more in the same style.
traits:
  - text: I am curious about the world and ask follow-up questions when something interests me.
    questions:
      - What is something most people overlook about their own city?
      - Can you explain how tides work?
  - text: I speak plainly and avoid jargon unless the person clearly wants it.
    questions:
      - What does a mortgage actually do?
      - How should I start learning to program?
# prompts: optional general user prompts, not tied to a trait.
prompts:
  - Tell me about your day.
"""
