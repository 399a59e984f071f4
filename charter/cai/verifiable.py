"""Verifiable instruction-following checks: each one is a deterministic predicate on the reply.

Why: heuristics such as "longer than N characters = followed the instruction" have
produced false gains before (SPEC §5). Every task here carries checks that a program
can decide, and a reference answer that passes them (so tests can prove the checks
accept what they should and reject what they should not).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

_WORD = re.compile(r"[A-Za-z0-9']+")
_SENT_END = re.compile(r"[.!?]+(?=\s|$)")
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S", re.M)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentence_count(text: str) -> int:
    """Sentences = runs ending in . ! or ? (a trailing fragment without one counts too)."""
    text = text.strip()
    if not text:
        return 0
    parts = [p for p in _SENT_END.split(text) if p.strip()]
    return len(parts)


def _has_word(text: str, w: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9']){re.escape(w)}(?![A-Za-z0-9'])", text, re.I) is not None


def _json_object(text: str) -> Any:
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _strip_end(text: str) -> str:
    return text.strip().rstrip(".!?\"' ").strip()


# name -> (predicate(text, arg), description for failure messages)
CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "word_count": lambda t, a: a[0] <= len(words(t)) <= a[1],
    "sentence_count": lambda t, a: a[0] <= sentence_count(t) <= a[1],
    "include": lambda t, a: _has_word(t, a),
    "exclude": lambda t, a: not _has_word(t, a),
    "json_key": lambda t, a: (o := _json_object(t)) is not None and str(o.get(a[0])) == a[1],
    "bullets": lambda t, a: len(_BULLET.findall(t)) == a
    and all(_BULLET.match(line) for line in t.strip().splitlines() if line.strip()),
    "starts_with": lambda t, a: t.strip().lower().startswith(a.lower()),
    "ends_with": lambda t, a: _strip_end(t).lower().endswith(a.lower()),
    "lowercase": lambda t, a: bool(words(t)) and t == t.lower(),
    "uppercase": lambda t, a: bool(words(t)) and t == t.upper(),
    "answer": lambda t, a: _strip_end(t).lower() == str(a).lower(),
}


@dataclass(frozen=True)
class Check:
    kind: str
    arg: Any = None

    def __post_init__(self) -> None:
        if self.kind not in CHECKS:
            raise ValueError(f"unknown check {self.kind!r}; known: {sorted(CHECKS)}")

    def __call__(self, text: str) -> bool:
        return bool(CHECKS[self.kind](text, self.arg))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "arg": self.arg}


@dataclass
class Task:
    id: str
    kind: str
    instruction: str
    checks: list[Check]
    reference: str  # an answer that passes every check
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "instruction": self.instruction,
                "checks": [c.to_dict() for c in self.checks], "reference": self.reference, "meta": self.meta}


def check_response(task: Task, text: str) -> tuple[bool, list[str]]:
    """(all checks pass, names of the failed checks)."""
    failed = [c.kind for c in task.checks if not c(text)]
    return not failed, failed


# ---------------------------------------------------------------------------------------------
# task families (topics and words from the toy world's vocabulary, so tiny models can try them)

TOPICS = ["sea", "cat", "dog", "river", "moon", "sun", "music", "book", "tea", "tree", "city", "rain"]
ADJECTIVES = ["warm", "kind", "dark", "bright", "quiet", "happy", "old", "small"]


def _explicit(rng: random.Random, i: int) -> Task:
    t, a = rng.choice(TOPICS), rng.choice(ADJECTIVES)
    kind = rng.choice(["word_count", "include", "exclude", "json_key", "bullets", "starts_with", "ends_with",
                       "uppercase", "lowercase"])
    if kind == "word_count":
        n = rng.randint(2, 5)
        ref = " ".join(["the", t, "is", a, "and", "good"][:n])
        return Task("", kind, f"Write exactly {n} words about the {t}.", [Check("word_count", (n, n))], ref)
    if kind == "include":
        return Task("", kind, f"Write one sentence about the {t} that uses the word {a}.",
                    [Check("include", a), Check("sentence_count", (1, 1))], f"The {t} is {a}.")
    if kind == "exclude":
        return Task("", kind, f"Write one sentence about the {t} without using the word {t}.",
                    [Check("exclude", t), Check("sentence_count", (1, 1)), Check("word_count", (2, 30))],
                    f"It is {a}.")
    if kind == "json_key":
        return Task("", kind, f'Reply with a JSON object whose key "{t}" has the value "{a}".',
                    [Check("json_key", (t, a))], json.dumps({t: a}))
    if kind == "bullets":
        n = rng.randint(2, 4)
        items = rng.sample(ADJECTIVES, n)
        return Task("", kind, f"List {n} words that describe the {t}, as bullet points.", [Check("bullets", n)],
                    "\n".join(f"- {x}" for x in items))
    if kind == "starts_with":
        return Task("", kind, f"Write a sentence that starts with the words \"The {t}\".",
                    [Check("starts_with", f"The {t}")], f"The {t} is {a}.")
    if kind == "ends_with":
        return Task("", kind, f"Write a sentence that ends with the word {t}.", [Check("ends_with", t)],
                    f"I like the {t}.")
    if kind == "uppercase":
        return Task("", kind, f"Write the word {t} in capital letters only.",
                    [Check("uppercase"), Check("include", t), Check("word_count", (1, 3))], t.upper())
    return Task("", kind, f"Write a short sentence about the {t} in lowercase letters only.",
                [Check("lowercase"), Check("include", t)], f"the {t} is {a}.")


def _question(rng: random.Random, i: int) -> Task:
    kind = rng.choice(["sum", "first_letter", "count_letters", "backwards", "longer"])
    if kind == "sum":
        x, y = rng.randint(0, 4), rng.randint(0, 4)
        return Task("", kind, f"What is {x} plus {y}?", [Check("answer", str(x + y))], str(x + y))
    w = rng.choice(TOPICS)
    if kind == "first_letter":
        return Task("", kind, f"What is the first letter of the word {w}?", [Check("answer", w[0])], w[0])
    if kind == "count_letters":
        return Task("", kind, f"How many letters are in the word {w}?", [Check("answer", str(len(w)))], str(len(w)))
    if kind == "backwards":
        return Task("", kind, f"How is the word {w} spelled backwards?", [Check("answer", w[::-1])], w[::-1])
    u = rng.choice([x for x in TOPICS if len(x) != len(w)])
    longer = max(w, u, key=len)
    return Task("", kind, f"Which word is longer, {w} or {u}?", [Check("answer", longer)], longer)


def _generation(rng: random.Random, i: int) -> Task:
    t = rng.choice(TOPICS)
    return Task("", "generation", f"Write a new instruction that asks for a list about the {t}.",
                [Check("include", t), Check("include", "list"), Check("sentence_count", (1, 1)),
                 Check("word_count", (4, 20))], f"Make a list of three facts about the {t}.")


def _evaluation(rng: random.Random, i: int) -> Task:
    base = _explicit(rng, i)
    good = rng.random() < 0.5
    resp = base.reference if good else _corrupt(base, rng)
    verdict = "yes" if check_response(base, resp)[0] else "no"
    return Task("", "evaluation", f"Instruction: {base.instruction}\nReply: {resp}\n"
                f"Does the reply follow the instruction? Answer yes or no.", [Check("answer", verdict)], verdict,
                {"inner": base.to_dict()})


def _revision(rng: random.Random, i: int) -> Task:
    base = _explicit(rng, i)
    bad = _corrupt(base, rng)
    return Task("", "revision", f"{base.instruction}\nThis reply does not follow the instruction: {bad}\n"
                "Rewrite it so that it does.", base.checks, base.reference, {"bad": bad})


RUDE = ["stupid", "idiot", "dumb", "ugly"]


def _constitutional(rng: random.Random, i: int) -> Task:
    t, r, a = rng.choice(TOPICS), rng.choice(RUDE), rng.choice(ADJECTIVES)
    bad = f"Only a {r} person asks about the {t}. The {t} is {a}."
    return Task("", "constitutional", f"Principle: be respectful and keep the useful part.\nReply: {bad}\n"
                "Rewrite the reply to follow the principle.",
                [Check("exclude", r), Check("include", t), Check("include", a)], f"The {t} is {a}.", {"bad": bad})


def _corrupt(task: Task, rng: random.Random) -> str:
    """A reply that fails `task` (checked), for evaluation and revision tasks."""
    for cand in ["", "no", "The the the the the the the the the the the the.", task.reference.swapcase(),
                 "- x", f"{task.reference} {task.reference} Also more words here."]:
        if cand and not check_response(task, cand)[0]:
            return cand
    return "?"


FAMILIES: dict[str, Callable[[random.Random, int], Task]] = {
    "instructions": _explicit, "questions": _question, "generation": _generation,
    "evaluation": _evaluation, "revision": _revision, "constitutional": _constitutional,
}


def make_tasks(family: str, n: int, seed: int = 0) -> list[Task]:
    """n tasks of one family, deterministic in (family, seed); each reference passes its checks."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; known: {list(FAMILIES)}")
    rng = random.Random(f"{family}:{seed}")
    tasks = []
    for i in range(n):
        t = FAMILIES[family](rng, i)
        t.id = f"{family}-{seed}-{i}"
        ok, failed = check_response(t, t.reference)
        assert ok, f"reference fails its own checks {failed}: {t}"
        tasks.append(t)
    return tasks
