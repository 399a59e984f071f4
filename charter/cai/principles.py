"""Constitutional AI principles: our YAML format, plus loaders for the two public JSON shapes.

A principle is the unit the CAI recipe samples from: one critique request, one
revision request, and one comparison instruction (for AI-feedback labels). Stored
requests are plain text; each consumer (chat or completion style) adds its own
framing, so the Anthropic-paper strings are unwrapped on load.

Formats (SPEC §2):
- ours (YAML): `principles: [{id, critique, revision, comparison?, category?}]`
- Anthropic paper (JSON): `{id: {"prompt": ["\\n\\nCritiqueRequest: ...\\n\\nCritique:"],
  "edit_request": "\\n\\nRevisionRequest: ...\\n\\nRevision:"}}`
- HF llm-swarm (JSON): `{"constitutions": [{"critic": str, "revision": str}], "system_chat": [[msg...]...]}`
- comparison instructions (JSON): a list of strings, as the RL-CAI lists of the Constitutional AI
  paper's repository ("Please choose the response that ... Options:"); critique and revision are
  derived from each instruction in our own words. Few-shot examples come from a separate file.
- principle lists (YAML): `principles: [{id, text, category?, ...}]` with top-level `version`/`date`,
  as bootstrap projects keep them; critique, revision and comparison are derived from `text`.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.data.jsonl import DataError, parse_json_or_yaml, read_text_file

DEFAULT_PRINCIPLES = Path(__file__).resolve().parent.parent / "principles" / "default.yaml"
CATEGORIES = ("harmlessness", "helpfulness", "honesty", "other")


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str  # asks the model to point out what is wrong with a response
    revision: str  # asks the model to rewrite the response to fix it
    comparison: str  # multiple-choice question for AI feedback: which response is better?
    category: str = "other"
    meta: dict = field(default_factory=dict, hash=False)  # extra fields the file gave, kept for `show`


@dataclass
class PrincipleSet:
    principles: list[Principle]
    fewshot: list[list[dict]] = field(default_factory=list)  # example chat transcripts, if the file had any
    source: str = "<memory>"
    format: str = "charter"  # which on-disk shape it was read from
    meta: dict = field(default_factory=dict)  # top-level fields such as version and date
    examples: str = ""  # worked AI-feedback examples put before every labeler question (a few-shot file)

    def __len__(self) -> int:
        return len(self.principles)

    def sample(self, rng: random.Random, k: int = 1) -> list[Principle]:
        """k distinct principles when possible (fresh ones each round), else with replacement."""
        if k <= len(self.principles):
            return rng.sample(self.principles, k)
        return [rng.choice(self.principles) for _ in range(k)]


def comparison_from_critique(critique: str) -> str:
    """A comparison question for principles that ship none (the external formats)."""
    return ("Which response is better, judged by this request: " + critique.strip()
            + " Choose the response that would need the least change.")


def requests_from_text(text: str) -> tuple[str, str, str]:
    """(critique, revision, comparison) in our words, for files that state a principle as one sentence."""
    return (f"Point out every way the response falls short of this principle: {text}",
            f"Rewrite the response so that it fully follows this principle: {text}",
            f"Which response better follows this principle: {text}")


_OPTIONS_TAIL = re.compile(r"\s*Options\s*:?\s*$", re.I)


def requests_from_comparison(instruction: str) -> tuple[str, str, str]:
    """(critique, revision, comparison) from a comparison instruction. Its trailing 'Options:' goes,
    because `comparison_question` adds the options block itself."""
    comparison = _OPTIONS_TAIL.sub("", instruction).strip()
    return (f"A reviewer will be asked: \"{comparison}\" Point out every way this response would lose.",
            f"Rewrite the response so that it is the one chosen when asked: \"{comparison}\"",
            comparison)


def _err(path: Any, where: str, msg: str) -> DataError:
    return DataError(f"{path}: {where}: {msg}")


def _text(path: Any, where: str, obj: dict, key: str, required: bool = True) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise _err(path, where, f"missing field {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise _err(path, where, f"field {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


_ANTHROPIC_WRAP = re.compile(r"^\s*(CritiqueRequest|RevisionRequest)\s*:\s*(.*?)\s*(?:\n\s*(Critique|Revision)\s*:\s*)?$",
                             re.S)


def unwrap_anthropic(text: str) -> str:
    """'\\n\\nCritiqueRequest: X\\n\\nCritique:' -> 'X'. Plain text passes through unchanged."""
    m = _ANTHROPIC_WRAP.match(text)
    return (m.group(2) if m else text).strip()


def _check_messages(path: Any, where: str, msgs: Any) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise _err(path, where, "expected a non-empty list of {role, content} messages")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise _err(path, f"{where}[{j}]", f"expected {{role: system|user|assistant, content: str}}, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def parse_ours(data: dict, path: Any = "<ours>") -> PrincipleSet:
    items = data.get("principles")
    if not isinstance(items, list) or not items:
        raise _err(path, "principles", "expected a non-empty list")
    out, seen = [], set()
    for i, obj in enumerate(items):
        where = f"principles[{i}]"
        if not isinstance(obj, dict):
            raise _err(path, where, f"expected a mapping, got {type(obj).__name__}")
        unknown = set(obj) - {"id", "critique", "revision", "comparison", "category"}
        if unknown:
            raise _err(path, where, f"unknown field(s) {sorted(unknown)}")
        pid = _text(path, where, obj, "id")
        if pid in seen:
            raise _err(path, where, f"duplicate id {pid!r}")
        seen.add(pid)
        critique = _text(path, where, obj, "critique")
        category = _text(path, where, obj, "category", required=False) or "other"
        if category not in CATEGORIES:
            raise _err(path, where, f"field 'category' must be one of {CATEGORIES}, got {category!r}")
        out.append(Principle(pid, critique, _text(path, where, obj, "revision"),
                             _text(path, where, obj, "comparison", required=False)
                             or comparison_from_critique(critique), category))
    fewshot = [_check_messages(path, f"fewshot[{i}]", t) for i, t in enumerate(data.get("fewshot") or [])]
    return PrincipleSet(out, fewshot, str(path), "charter")


def parse_anthropic(data: dict, path: Any = "<anthropic>") -> PrincipleSet:
    if not data:
        raise _err(path, "<root>", "no principles")
    out = []
    for pid, obj in data.items():
        where = f"{pid!r}"
        if not isinstance(obj, dict):
            raise _err(path, where, f"expected an object with 'prompt' and 'edit_request', got {type(obj).__name__}")
        prompts = obj.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise _err(path, f"{where}.prompt", f"expected a non-empty list of strings, got {prompts!r}")
        revision = _text(path, where, obj, "edit_request")
        critique = unwrap_anthropic(prompts[0])
        out.append(Principle(str(pid), critique, unwrap_anthropic(revision), comparison_from_critique(critique)))
    return PrincipleSet(out, [], str(path), "anthropic")


def parse_llm_swarm(data: dict, path: Any = "<llm-swarm>") -> PrincipleSet:
    items = data.get("constitutions")
    if not isinstance(items, list) or not items:
        raise _err(path, "constitutions", "expected a non-empty list of {critic, revision}")
    out = []
    for i, obj in enumerate(items):
        where = f"constitutions[{i}]"
        if not isinstance(obj, dict):
            raise _err(path, where, f"expected an object, got {type(obj).__name__}")
        critique = _text(path, where, obj, "critic")
        out.append(Principle(f"c{i}", critique, _text(path, where, obj, "revision"),
                             comparison_from_critique(critique)))
    chats = data.get("system_chat") or []
    if not isinstance(chats, list):
        raise _err(path, "system_chat", "expected a list of conversations")
    fewshot = [_check_messages(path, f"system_chat[{i}]", c) for i, c in enumerate(chats)]
    return PrincipleSet(out, fewshot, str(path), "llm-swarm")


def parse_comparisons(data: list, path: Any = "<comparisons>") -> PrincipleSet:
    """A JSON list of comparison-instruction strings."""
    if not data:
        raise _err(path, "<root>", "the list has no comparison instructions")
    out = []
    for i, instruction in enumerate(data):
        if not isinstance(instruction, str) or not _OPTIONS_TAIL.sub("", instruction).strip():
            raise _err(path, f"[{i}]", f"expected a non-empty comparison-instruction string, got {instruction!r}")
        out.append(Principle(f"comparison-{i}", *requests_from_comparison(instruction)))
    return PrincipleSet(out, [], str(path), "comparisons")


def parse_text_list(data: dict, path: Any = "<principle list>") -> PrincipleSet:
    """`principles: [{id, text, category?, ...}]`: every field besides id, text and category is kept as metadata."""
    out, seen = [], set()
    for i, obj in enumerate(data["principles"]):
        where = f"principles[{i}]"
        if not isinstance(obj, dict):
            raise _err(path, where, f"expected a mapping with 'id' and 'text', got {type(obj).__name__}")
        pid = str(obj["id"]) if obj.get("id") is not None else f"p{i}"
        if pid in seen:
            raise _err(path, where, f"duplicate id {pid!r}")
        seen.add(pid)
        category = _text(path, where, obj, "category", required=False) or "other"
        meta = {k: v for k, v in obj.items() if k not in ("id", "text", "category")}
        out.append(Principle(pid, *requests_from_text(_text(path, where, obj, "text")), category, meta))
    top = {k: v for k, v in data.items() if k != "principles"}
    return PrincipleSet(out, [], str(path), "principle list", top)


def load_fewshot_text(path: str | Path) -> str:
    """Few-shot examples for AI-feedback prompts: a text file, or a JSON string or list of strings."""
    path = Path(path)
    text = read_text_file(path, "a few-shot file (plain text, or a JSON string or list of strings)")
    if path.suffix != ".json":
        return text.strip()
    data = parse_json_or_yaml(path, text, "json")
    items = [data] if isinstance(data, str) else data
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise DataError(f"{path}: expected a JSON string or a non-empty list of strings (worked examples)")
    return "\n\n".join(x.strip() for x in items)


def parser_for(data: Any):
    """The parser for a file's parsed content, by its shape; None when it is no principles file."""
    if isinstance(data, list):
        return parse_comparisons if any(isinstance(x, str) for x in data) else None  # OCT lists hold objects
    if not isinstance(data, dict) or not data:
        return None
    if "principles" in data:
        items = data["principles"]
        text_list = isinstance(items, list) and items and all(isinstance(x, dict) and "text" in x for x in items)
        return parse_text_list if text_list else parse_ours
    if "constitutions" in data:
        return parse_llm_swarm
    if all(isinstance(v, dict) and ("prompt" in v or "edit_request" in v) for v in data.values()):
        return parse_anthropic
    return None


def read_principles_data(path: Path) -> Any:
    text = read_text_file(path, "a principles file (Charter YAML, principle-list YAML, llm-swarm JSON, "
                                "Anthropic JSON or a JSON list of comparison instructions)")
    return parse_json_or_yaml(path, text, "json" if path.suffix == ".json" else "yaml")


def load_principles(path: str | Path | None = None, fewshot: str | Path | None = None) -> PrincipleSet:
    """Load any of the five formats, detected by content (None -> our default set), plus an optional
    few-shot file of worked AI-feedback examples (`load_fewshot_text`)."""
    path = Path(path) if path is not None else DEFAULT_PRINCIPLES
    data = read_principles_data(path)
    parser = parser_for(data)
    if parser is None:
        raise DataError(f"{path}: unknown principles format: expected 'principles' (Charter YAML or a list of "
                        "{id, text}), 'constitutions' (llm-swarm), {id: {prompt, edit_request}} (Anthropic) "
                        "or a JSON list of comparison-instruction strings")
    principle_set = parser(data, path)
    principle_set.examples = load_fewshot_text(fewshot) + "\n\n" if fewshot is not None else ""
    return principle_set


def describe(ps: PrincipleSet) -> list[str]:
    """Lines for `charter constitution show`: what each principle asks at each step."""
    head = [f"principles: {len(ps)} ({ps.format} format)   source: {ps.source}"]
    head += [f"{k}: {v}" for k, v in ps.meta.items()]
    if ps.fewshot:
        head.append(f"few-shot transcripts: {len(ps.fewshot)}")
    for p in ps.principles:
        head.append(f"- {p.id} [{p.category}]" + "".join(f" {k}={v}" for k, v in p.meta.items()))
        head += [f"    critique:   {p.critique}", f"    revision:   {p.revision}", f"    comparison: {p.comparison}"]
    return head
