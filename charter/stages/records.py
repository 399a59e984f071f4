"""Resumable generation: each generated record lives in a `RecordStore`, keyed by a stable id.

Work is a list of items (anything with a stable `.id`) cut into FIXED chunks of `chunk_size`
in list order. A chunk is generated in one call, seeded from the run seed and the chunk's ids
only, so its output never depends on what ran before it. A chunk with any record missing is
regenerated whole, with the same seed, and only the missing records are added. So a run that
was killed (`kill -9`, a dead server) and re-run equals an uninterrupted run record for record,
as long as the items, `seed`, `chunk_size` and the backend agree; a kill loses at most one chunk.

Distillation and prompt expansion use `Job`s (one request, `n` samples with ids
`sample_id(job.key, k)`) through `generate_into`; introspection passes its own items and
chunk function to `generate_resumable`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from charter.backends.base import Completion, Generator, GenerationRequest, SamplingParams
from charter.data.jsonl import RecordStore, stable_id


@dataclass
class Job:
    key: str  # stable content key, e.g. stable_id(prompt, role)
    request: GenerationRequest
    meta: dict[str, Any] = field(default_factory=dict)  # copied into each sample record

    @property
    def id(self) -> str:  # what chunk seeds are derived from
        return self.key


def sample_id(job_key: str, k: int) -> str:
    return stable_id(job_key, k)


def chunk_seed(seed: int | None, ids: list[str]) -> int | None:
    """A chunk's seed depends only on the run seed and its ids, never on earlier work (None stays unseeded)."""
    return None if seed is None else int(stable_id("seed", seed, ids)[:8], 16)


def generate_resumable(store: RecordStore, items: Sequence[Any], chunk_size: int, seed: int | None,
                       fn: Callable[[list, int | None], list[dict]], desc: str = "generate",
                       progress: bool = True,
                       record_ids: Callable[[Any], list[str]] | None = None) -> int:
    """Run `fn(chunk, chunk_seed)` for every fixed chunk with a record missing from `store`.

    `record_ids(item)` lists the ids an item's records get (default `[item.id]`). Returns how
    many records were written.
    """
    ids_of = record_ids or (lambda it: [it.id])
    done = [all(r in store for r in ids_of(it)) for it in items]
    written = 0
    bar = tqdm(total=len(items), initial=sum(done), desc=desc, unit="item", disable=not progress)
    for s in range(0, len(items), chunk_size):
        chunk = list(items[s:s + chunk_size])
        missing = len(chunk) - sum(done[s:s + chunk_size])
        if not missing:
            continue
        for rec in fn(chunk, chunk_seed(seed, [it.id for it in chunk])):
            written += store.add(rec)
        bar.update(missing)
    bar.close()
    return written


def sample_record(job: Job, k: int, c: Completion) -> dict[str, Any]:
    return {"id": sample_id(job.key, k), "job": job.key, "sample": k, "text": c.text,
            "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, **job.meta}


def generate_into(store: RecordStore, gen: Generator, jobs: list[Job], params: SamplingParams,
                  chunk_size: int = 32, desc: str = "generate", progress: bool = False) -> int:
    """Generate the `params.n` samples of every job missing from `store` (seeded per chunk from
    `params.seed`); returns how many records were written."""
    def run(chunk: list[Job], seed: int | None) -> list[dict]:
        outs = gen.generate([j.request for j in chunk], params.model_copy(update={"seed": seed}))
        return [sample_record(job, k, c) for job, comps in zip(chunk, outs) for k, c in enumerate(comps)]

    return generate_resumable(store, jobs, chunk_size, params.seed, run, desc, progress,
                              lambda j: [sample_id(j.key, k) for k in range(params.n)])


def samples_of(store: RecordStore, job: Job, n: int) -> list[dict[str, Any]]:
    return [store.records[sample_id(job.key, k)] for k in range(n)]
