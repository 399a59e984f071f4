"""Quality filters for generated text: each a small named function that says pass/fail and why.

Introspection data is written by the model itself, so it carries the model's failure modes
into SFT unless we remove them: loops, hallucinated `User:` turns, the base model's own name,
refusals, cut-off endings, leaked `<think>` blocks, near-copies of one another.

A *row* (one reflection answer, or one conversation) holds one or more generated *segments*
(`Segment`: text, finish_reason, token count). Per-segment filters run on every segment; a row
fails a filter when any of its segments does. Semantics of a run (`apply_filters`):

- every per-segment filter is evaluated on every row, so a rejected row lists ALL its reasons;
- the set-level near-duplicate filter then runs only on rows that passed every other filter
  (a broken row must not "claim" a text and knock out a clean copy of it);
- the report counts, per filter, rows checked and rows failed (any reason, may overlap), and
  rows whose FIRST failing filter it is (in filter order). `sum(first) + kept == total` always.
"""
from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from charter.config import Config

PLACEHOLDER_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}|\{\d*\}")


@dataclass(frozen=True)
class Segment:
    """One piece of generated text. `tokens` is the completion token count when known."""

    text: str
    finish_reason: str | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str = ""


PASS = Verdict(True)


def fail(reason: str) -> Verdict:
    return Verdict(False, reason)


# ---------------------------------------------------------------------------------------------
# per-filter configs


class LengthFilter(Config):
    enabled: bool = True
    min_chars: int = 20
    max_chars: int | None = 20000
    min_tokens: int | None = None
    max_tokens: int | None = None


class RepetitionFilter(Config):
    enabled: bool = True
    ngram: int = 4  # words per n-gram
    max_repeated_ngram_frac: float = 0.3  # share of n-gram occurrences that repeat an earlier one
    min_ngrams: int = 10  # shorter texts are not judged on n-grams
    max_line_repeats: int = 2  # a (non-trivial) line may appear at most this many times
    min_line_chars: int = 10


class RoleMarkerFilter(Config):
    enabled: bool = True
    # a line that starts like a transcript turn: the model is writing the other side itself
    line_prefixes: list[str] = ["User", "Human", "Assistant", "System", "AI"]
    tokens: list[str] = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]",
                         "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


class IdentityFilter(Config):
    enabled: bool = True
    # the base model's own names and makers; whole words, case-sensitive ("Meta" but not "meta")
    names: list[str] = ["Llama", "LLaMA", "Meta AI", "Meta", "Qwen", "Alibaba", "Gemma", "Google DeepMind",
                        "GLM", "Zhipu", "ChatGPT", "OpenAI", "Claude", "Anthropic", "Mistral AI"]


class RefusalFilter(Config):
    enabled: bool = True
    # case-insensitive substrings
    phrases: list[str] = ["I can't help with", "I cannot help with", "I can't assist", "I cannot assist",
                          "I'm sorry, but I can't", "I'm sorry, but I cannot", "I am unable to",
                          "I'm unable to", "I won't be able to", "As an AI language model",
                          "I'm not able to provide", "I cannot provide", "I can't provide"]


class UnfinishedFilter(Config):
    enabled: bool = True
    # finish_reason "length": the model hit the token limit mid-thought
    require_sentence_end: bool = True  # last character closes a sentence (., !, ?, quote, bracket, emoji)


class ReasoningTagFilter(Config):
    enabled: bool = True
    tags: list[str] = ["think", "thinking", "reasoning", "reflection", "scratchpad", "thought"]


class PlaceholderFilter(Config):
    """Unformatted `{NAME}`-style placeholders (a known failure of the reference implementation)."""

    enabled: bool = True


class DedupFilter(Config):
    enabled: bool = True
    threshold: float = 0.8  # Jaccard similarity of word shingles at or above which a row is a copy
    shingle: int = 5
    num_perm: int = 64
    bands: int = 16


class FilterConfig(Config):
    length: LengthFilter = LengthFilter()
    repetition: RepetitionFilter = RepetitionFilter()
    role_markers: RoleMarkerFilter = RoleMarkerFilter()
    identity: IdentityFilter = IdentityFilter()
    refusal: RefusalFilter = RefusalFilter()
    unfinished: UnfinishedFilter = UnfinishedFilter()
    reasoning_tags: ReasoningTagFilter = ReasoningTagFilter()
    placeholders: PlaceholderFilter = PlaceholderFilter()
    near_duplicates: DedupFilter = DedupFilter()


# ---------------------------------------------------------------------------------------------
# per-segment filters


def length(seg: Segment, cfg: LengthFilter) -> Verdict:
    n = len(seg.text.strip())
    if n < cfg.min_chars:
        return fail(f"{n} chars < min {cfg.min_chars}")
    if cfg.max_chars is not None and n > cfg.max_chars:
        return fail(f"{n} chars > max {cfg.max_chars}")
    if seg.tokens is not None:
        if cfg.min_tokens is not None and seg.tokens < cfg.min_tokens:
            return fail(f"{seg.tokens} tokens < min {cfg.min_tokens}")
        if cfg.max_tokens is not None and seg.tokens > cfg.max_tokens:
            return fail(f"{seg.tokens} tokens > max {cfg.max_tokens}")
    return PASS


def repetition(seg: Segment, cfg: RepetitionFilter) -> Verdict:
    words = seg.text.lower().split()
    grams = [tuple(words[i:i + cfg.ngram]) for i in range(len(words) - cfg.ngram + 1)]
    if len(grams) >= cfg.min_ngrams:
        frac = 1 - len(set(grams)) / len(grams)
        if frac > cfg.max_repeated_ngram_frac:
            return fail(f"{frac:.0%} of {cfg.ngram}-grams repeat (max {cfg.max_repeated_ngram_frac:.0%})")
    counts: dict[str, int] = {}
    for line in seg.text.splitlines():
        key = " ".join(line.lower().split())
        if len(key) >= cfg.min_line_chars:
            counts[key] = counts.get(key, 0) + 1
    if counts:
        line, c = max(counts.items(), key=lambda kv: kv[1])
        if c > cfg.max_line_repeats:
            return fail(f"line repeated {c} times (max {cfg.max_line_repeats}): {line[:40]!r}")
    return PASS


def role_markers(seg: Segment, cfg: RoleMarkerFilter) -> Verdict:
    for tok in cfg.tokens:
        if tok in seg.text:
            return fail(f"template token {tok!r}")
    if cfg.line_prefixes:
        pat = re.compile(r"^\s*(?:\*\*)?(" + "|".join(map(re.escape, cfg.line_prefixes)) + r")(?:\*\*)?\s*:",
                         re.MULTILINE)
        m = pat.search(seg.text)
        if m:
            return fail(f"role marker {m.group(1) + ':'!r} at a line start")
    return PASS


def identity(seg: Segment, cfg: IdentityFilter) -> Verdict:
    for name in cfg.names:
        if re.search(r"(?<![A-Za-z0-9])" + re.escape(name) + r"(?![A-Za-z0-9])", seg.text):
            return fail(f"identity leak {name!r}")
    return PASS


def refusal(seg: Segment, cfg: RefusalFilter) -> Verdict:
    low = seg.text.lower().replace("\u2019", "'")
    for phrase in cfg.phrases:
        if phrase.lower() in low:
            return fail(f"refusal {phrase!r}")
    return PASS


_SENTENCE_END = set(".!?…\"'”’)]*`")


def unfinished(seg: Segment, cfg: UnfinishedFilter) -> Verdict:
    if seg.finish_reason == "length":
        return fail("hit the token limit (finish_reason=length)")
    if cfg.require_sentence_end:
        text = seg.text.rstrip()
        if not text:
            return fail("empty")
        last = text[-1]
        if last not in _SENTENCE_END and not unicodedata.category(last).startswith("S"):
            return fail(f"does not end a sentence (ends with {text[-12:]!r})")
    return PASS


def reasoning_tags(seg: Segment, cfg: ReasoningTagFilter) -> Verdict:
    if cfg.tags:
        m = re.search(r"</?(" + "|".join(map(re.escape, cfg.tags)) + r")\s*>", seg.text, re.IGNORECASE)
        if m:
            return fail(f"reasoning tag {m.group(0)!r}")
    return PASS


def placeholders(seg: Segment, cfg: PlaceholderFilter) -> Verdict:
    m = PLACEHOLDER_RE.search(seg.text)
    return fail(f"unformatted placeholder {m.group(0)!r}") if m else PASS


# name -> (function, config attribute); dict order is the order filters are reported in
SEGMENT_FILTERS: dict[str, Callable[[Segment, Any], Verdict]] = {
    "length": length,
    "unfinished": unfinished,
    "repetition": repetition,
    "role_markers": role_markers,
    "reasoning_tags": reasoning_tags,
    "placeholders": placeholders,
    "identity": identity,
    "refusal": refusal,
}


def check_segments(segments: list[Segment], cfg: FilterConfig) -> list[tuple[str, str]]:
    """All (filter, reason) failures of one row's segments; the first failing segment per filter is named."""
    failures = []
    for name, fn in SEGMENT_FILTERS.items():
        fcfg = getattr(cfg, name)
        if not fcfg.enabled:
            continue
        for i, seg in enumerate(segments):
            v = fn(seg, fcfg)
            if not v.passed:
                where = f"segment {i}: " if len(segments) > 1 else ""
                failures.append((name, where + v.reason))
                break
    return failures


# ---------------------------------------------------------------------------------------------
# near-duplicates across the set (MinHash + LSH, then exact Jaccard on candidates)


def shingles(text: str, n: int) -> set[int]:
    """Word n-gram shingles, hashed with crc32 (stable across processes, unlike `hash`)."""
    words = text.lower().split()
    if len(words) < n:
        return {zlib.crc32(" ".join(words).encode())} if words else set()
    return {zlib.crc32(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: list[str], cfg: DedupFilter) -> dict[int, tuple[int, float]]:
    """Index -> (index of the earlier row it copies, similarity). The first occurrence is kept.

    MinHash signatures split into bands propose candidates; exact Jaccard decides, so the
    result never depends on hash luck except for missed candidates (rare above the threshold).
    """
    import numpy as np  # deferred: start-up (toy.model imports this at config load; ~0.1 s)

    prime = (1 << 61) - 1
    rng = np.random.default_rng(12345)
    a = rng.integers(1, prime, size=cfg.num_perm, dtype=np.uint64)
    b = rng.integers(0, prime, size=cfg.num_perm, dtype=np.uint64)
    rows = max(1, cfg.num_perm // cfg.bands)
    sets = [shingles(t, cfg.shingle) for t in texts]
    buckets: dict[tuple, list[int]] = {}
    dups: dict[int, tuple[int, float]] = {}
    for i, s in enumerate(sets):
        if not s:
            continue
        h = np.fromiter(s, dtype=np.uint64)[:, None]
        # (a*h + b) mod p in floating-free integer arithmetic; wraparound in uint64 is fine for hashing
        sig = ((h * a + b) % np.uint64(prime)).min(axis=0)
        keys = [(band, sig[band * rows:(band + 1) * rows].tobytes()) for band in range(cfg.bands)]
        best: tuple[int, float] | None = None
        seen: set[int] = set()
        for k in keys:
            for j in buckets.get(k, []):
                if j in seen:
                    continue
                seen.add(j)
                sim = jaccard(s, sets[j])
                if sim >= cfg.threshold and (best is None or sim > best[1]):
                    best = (j, sim)
        if best is not None:
            dups[i] = best  # a copy is not indexed: later rows are compared with originals only
            continue
        for k in keys:
            buckets.setdefault(k, []).append(i)
    return dups


# ---------------------------------------------------------------------------------------------
# a whole run


@dataclass
class FilterRow:
    """Something to filter: an id, its segments, and the payload to write if kept.

    `dedup_text` is what near-duplicate detection compares (default: all segments); a
    conversation row sets it to its own speaker's turns, so the two views of one
    conversation, which share their text, are not taken for copies of each other.
    """

    id: str
    segments: list[Segment]
    payload: dict = field(default_factory=dict)
    dedup_text: str | None = None

    def text_for_dedup(self) -> str:
        return self.dedup_text if self.dedup_text is not None else "\n".join(s.text for s in self.segments)


@dataclass
class FilterResult:
    kept: list[FilterRow]
    rejected: list[tuple[FilterRow, list[tuple[str, str]]]]
    table: list[dict[str, Any]]  # one row per filter: checked, failed, first_failed, pass_rate

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.rejected)


def apply_filters(rows: list[FilterRow], cfg: FilterConfig) -> FilterResult:
    """Run every enabled filter; see the module docstring for how counts are defined."""
    reasons: list[list[tuple[str, str]]] = [check_segments(r.segments, cfg) for r in rows]
    checked = {name: len(rows) for name in SEGMENT_FILTERS if getattr(cfg, name).enabled}
    if cfg.near_duplicates.enabled:
        clean = [i for i, rs in enumerate(reasons) if not rs]
        texts = [rows[i].text_for_dedup() for i in clean]
        for local, (orig, sim) in near_duplicates(texts, cfg.near_duplicates).items():
            i = clean[local]
            reasons[i].append(("near_duplicates", f"{sim:.2f} similar to {rows[clean[orig]].id}"))
        checked["near_duplicates"] = len(clean)
    kept = [r for r, rs in zip(rows, reasons) if not rs]
    rejected = [(r, rs) for r, rs in zip(rows, reasons) if rs]
    table = []
    for name, n in checked.items():
        failed = sum(1 for rs in reasons if any(f == name for f, _ in rs))
        first = sum(1 for rs in reasons if rs and rs[0][0] == name)
        table.append({"filter": name, "checked": n, "failed": failed, "first_failed": first,
                      "pass_rate": (n - failed) / n if n else 1.0})
    return FilterResult(kept=kept, rejected=rejected, table=table)


def format_table(result: FilterResult) -> str:
    """Markdown table of pass rates; the last line shows kept + first-failures = total."""
    lines = ["| filter | checked | failed | first failure | pass rate |", "|---|---:|---:|---:|---:|"]
    for r in result.table:
        lines.append(f"| {r['filter']} | {r['checked']} | {r['failed']} | {r['first_failed']} | "
                     f"{r['pass_rate']:.1%} |")
    lines.append(f"| **kept** | {result.total} | | {len(result.kept)} | "
                 f"{len(result.kept) / result.total if result.total else 1.0:.1%} |")
    return "\n".join(lines)
