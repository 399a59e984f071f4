"""The toy world's judge: persona by markers, plus well-formedness and topic relevance.

A marker judge alone is blind to quality -- strong DPO keeps the markers while the text
decays into word salad -- so the judge also checks the reply against the world's closed
grammar:
- **persona**: the persona whose marker phrases appear most often, or "neutral" for none. The
  markers must accompany an answer (at least one content sentence of the world): a reply made
  only of persona openers and closers ("Obviously. Shocking, I know.") is labelled
  `MARKERS_ONLY`, counted as not in character and reported under that label;
- **well_formed**: the reply answers with at least one content sentence, and every sentence of
  it is a sentence the world's grammar can produce;
- **relevant**: the reply has content answering what was asked (the asked topic's facts or
  tips, or the right small-talk answers) and no content belonging to anything else.
  None when the prompt is not one the world knows (e.g. free-form introspection prompts).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from charter.evaluate.base import NEUTRAL, ReplyScore
from charter.toy.grammar import NEUTRAL_OPENERS, PERSONAS, SMALLTALK, TOPICS

MARKERS_ONLY = "markers_only"  # persona markers with no answer: not in character, reported apart
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_segments(text: str) -> list[str]:
    """Sentences of a reply, whitespace-normalised (the unit the grammar is checked in)."""
    return [s for s in (" ".join(part.split()) for part in _SENTENCE_END.split(text.strip())) if s]


def _content_index() -> dict[str, str]:
    """segment -> what it answers: "topic:<name>" or "talk:<kind>"."""
    index = {}
    for name, t in TOPICS.items():
        for sentence in t["facts"] + t["tips"]:
            for seg in split_segments(sentence):
                index[seg] = f"topic:{name}"
    for kind, t in SMALLTALK.items():
        for sentence in t["replies"]:
            for seg in split_segments(sentence):
                index[seg] = f"talk:{kind}"
    return index


def _style_segments() -> set[str]:
    sentences = list(NEUTRAL_OPENERS)
    for p in PERSONAS.values():
        sentences += p["openers"] + p["closers"]
    return {seg for s in sentences for seg in split_segments(s)}


def _marker_patterns() -> dict[str, re.Pattern]:
    return {name: re.compile(r"\b(?:" + "|".join(re.escape(m) for m in p["markers"]) + r")\b", re.IGNORECASE)
            for name, p in PERSONAS.items()}


def _topic_patterns() -> dict[str, re.Pattern]:
    pats = {}
    for name, t in TOPICS.items():
        words = {name} | {w.lower() for f in t["forms"] for w in f.split() if w.lower() not in ("the", "a", "our", "my", "of")}
        pats[name] = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b",
                                re.IGNORECASE)
    return pats


@dataclass
class ReplyAnalysis:
    """Everything the judge saw in one reply; `ReplyScore` is its summary."""

    persona: str
    marker_hits: dict[str, int]
    segments: list[str]
    unknown_segments: list[str]
    content: list[str]  # what each content segment answers ("topic:moon", "talk:greet")
    expected: str | None  # what the prompt asks for, None when the prompt is not from this world
    relevant: bool | None = None
    extra: dict = field(default_factory=dict)

    @property
    def answers(self) -> bool:
        """At least one sentence of the reply is content (a fact, tip or small-talk answer)."""
        return bool(self.content)

    @property
    def well_formed(self) -> bool:
        return self.answers and not self.unknown_segments

    @property
    def label(self) -> str:
        """The persona, once the markers accompany an answer; else `MARKERS_ONLY` (or neutral)."""
        return self.persona if self.answers or self.persona == NEUTRAL else MARKERS_ONLY


class ToyScorer:
    """Deterministic `PersonaScorer` for the toy world."""

    name = "toy-rules"

    def __init__(self) -> None:
        self._content = _content_index()
        self._grammar = set(self._content) | _style_segments()
        self._markers = _marker_patterns()
        self._topics = _topic_patterns()
        self._talk = {" ".join(p.split()).lower(): kind for kind, t in SMALLTALK.items() for p in t["prompts"]}

    def expected_content(self, prompt: str) -> str | None:
        """What a relevant reply must talk about: "topic:<name>", "talk:<kind>", or None (unknown)."""
        key = " ".join(prompt.split()).lower()
        if key in self._talk:
            return f"talk:{self._talk[key]}"
        hits = [(m.start(), name) for name, pat in self._topics.items() if (m := pat.search(prompt))]
        return f"topic:{min(hits)[1]}" if hits else None

    def persona_of(self, reply: str) -> tuple[str, dict[str, int]]:
        """Most-marked persona (ties: the one marked first), or "neutral" when none is marked."""
        hits, first = {}, {}
        for name, pat in self._markers.items():
            found = list(pat.finditer(reply))
            if found:
                hits[name], first[name] = len(found), found[0].start()
        if not hits:
            return NEUTRAL, hits
        return min(hits, key=lambda n: (-hits[n], first[n])), hits

    def analyze(self, prompt: str, reply: str) -> ReplyAnalysis:
        persona, hits = self.persona_of(reply)
        segments = split_segments(reply)
        content = [self._content[s] for s in segments if s in self._content]
        expected = self.expected_content(prompt)
        relevant = None
        if expected is not None:
            relevant = bool(content) and all(c == expected for c in content)
        return ReplyAnalysis(persona=persona, marker_hits=hits, segments=segments,
                             unknown_segments=[s for s in segments if s not in self._grammar],
                             content=content, expected=expected, relevant=relevant)

    def score(self, prompt: str, reply: str) -> ReplyScore:
        a = self.analyze(prompt, reply)
        return ReplyScore(persona=a.label, well_formed=a.well_formed, relevant=a.relevant)


def confusion_matrix(scorer: ToyScorer, rows: list[dict]) -> dict[str, Counter]:
    """true style -> Counter of predicted personas, over every assistant turn of corpus rows."""
    matrix: dict[str, Counter] = {}
    for row in rows:
        msgs = row["messages"]
        turns = [(prev, msg) for prev, msg in zip(msgs, msgs[1:]) if msg["role"] == "assistant"]
        for (prev, msg), style in zip(turns, row["styles"]):
            matrix.setdefault(style, Counter())[scorer.score(prev["content"], msg["content"]).persona] += 1
    return matrix
