"""Prompt expansion: from each trait's seed questions to a target number of user prompts.

The generator continues a numbered list that is prefilled with the trait and its seeds.
We keep lines that parse as `N. text`, start with a letter and end in `?` or `.`, and drop a
line when more than half of its words already appear in one earlier prompt (SPEC §1).
Raw generations are stored (resumable); parsing and filtering are a pure function of
them, so a resumed run reaches exactly the prompt set an uninterrupted run would.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from charter.backends.base import GenerationRequest, Generator, SamplingParams
from charter.constitution import Constitution
from charter.constitution_prompt import expansion_request
from charter.data.jsonl import RecordStore, canonical_prompt, stable_id
from charter.data.texts import read_texts
from charter.stages.records import Job, generate_into, samples_of

_NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s+(.+?)\s*$")
_WORD = re.compile(r"[a-z0-9']+")


def parse_numbered(text: str) -> tuple[list[str], int]:
    """(well-formed items, lines rejected). A line is kept if `N. text`, letter-first, ends in ? or ."""
    kept, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _NUMBERED.match(line)
        item = m.group(1) if m else ""
        if item and item[0].isalpha() and item[-1] in "?.":
            kept.append(item)
        else:
            bad += 1
    return kept, bad


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_near_duplicate(text: str, earlier: list[set[str]], threshold: float = 0.5) -> bool:
    """True when more than `threshold` of the text's words appear in some single earlier prompt."""
    ws = words(text)
    if not ws:
        return True
    return any(sum(w in e for w in ws) / len(ws) > threshold for e in earlier)


def prompt_record(text: str, source: str, trait_index: int | None = None, trait: str | None = None) -> dict[str, Any]:
    return {"id": stable_id("prompt", text), "prompt": text, "source": source,
            "trait_index": trait_index, "trait": trait}


def expand_prompts(constitution: Constitution, gen: Generator | None, store: RecordStore | None,
                   per_trait: int, samples: int = 4, rounds: int = 3,
                   sampling: SamplingParams | None = None, chunk_size: int = 32,
                   progress: bool = False) -> tuple[list[dict[str, Any]], Counter]:
    """Seeds first, then generated prompts, up to `per_trait` per trait; plus the constitution's
    extra prompts. Returns (prompt records, counts)."""
    counts: Counter = Counter()
    earlier: list[set[str]] = []
    per: list[list[dict[str, Any]]] = []
    for i, t in enumerate(constitution.traits):
        seeds = list(dict.fromkeys(t.questions))[:per_trait]
        per.append([prompt_record(q, "seed", i, t.text) for q in seeds])
        earlier += [set(words(q)) for q in seeds]
        counts["seed"] += len(seeds)
    params = (sampling or SamplingParams(temperature=1.0, max_new_tokens=512)).model_copy(update={"n": samples})
    for r in range(rounds if gen is not None else 0):
        need = [i for i in range(len(per)) if len(per[i]) < per_trait]
        if not need:
            break
        jobs = {}
        for i in need:
            t = constitution.traits[i]
            messages, prefill = expansion_request(t, t.questions, per_trait)
            jobs[i] = Job(stable_id("expand", t.text, t.questions, per_trait, r),
                          GenerationRequest(messages=messages, prefill=prefill), {"trait_index": i, "round": r})
        generate_into(store, gen, list(jobs.values()), params, chunk_size, f"expand prompts (round {r + 1})", progress)
        for i in need:
            t = constitution.traits[i]
            first = f"{len(t.questions) + 1}."  # the prefill ended with this number
            for rec in samples_of(store, jobs[i], samples):
                lines = (first + rec["text"]).splitlines()
                if rec["finish_reason"] == "length" and lines:
                    lines, counts["cut_off"] = lines[:-1], counts["cut_off"] + 1  # last line may be cut
                items, bad = parse_numbered("\n".join(lines))
                counts["bad_format"] += bad
                for q in items:
                    if len(per[i]) >= per_trait:
                        counts["over_target"] += 1
                    elif is_near_duplicate(q, earlier):
                        counts["near_duplicate"] += 1
                    else:
                        per[i].append(prompt_record(q, "generated", i, t.text))
                        earlier.append(set(words(q)))
                        counts["generated"] += 1
    for i, recs in enumerate(per):
        counts["short_of_target"] += max(0, per_trait - len(recs))
    out = [r for recs in per for r in recs]
    out += [prompt_record(q, "constitution") for q in constitution.prompts]
    counts["constitution"] += len(constitution.prompts)
    return out, counts


def general_prompts(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """General chat prompts from a user file (`.txt`, LIMA-style `.jsonl`, ...: `charter.data.texts` rules)."""
    return [prompt_record(q, "general") for q in read_texts(path, "prompt", limit)]


def dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same text from two sources (a seed also in the general file) becomes one prompt."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        seen.setdefault(r["id"], r)
    return list(seen.values())


def prompt_overlap(eval_prompts: list[str], train_prompts: list[str]) -> dict[str, Any]:
    """How many evaluation prompts were also training prompts (the figure `summary.json` reports;
    anything above 0 means the evaluation is not held out)."""
    train = {canonical_prompt(t) for t in train_prompts}
    distinct = list(dict.fromkeys(canonical_prompt(p) for p in eval_prompts))
    shared = [p for p in distinct if p in train]
    return {"eval_prompts": len(eval_prompts), "eval_distinct": len(distinct), "train_prompts": len(train),
            "overlap": len(shared), "overlap_examples": shared[:5]}
