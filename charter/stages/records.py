"""Resumable generation: each sample is one record in a `RecordStore`, keyed by a stable id.

A job is one request (a prompt and its role). Its `n` samples get the ids
`stable_id(job_key, k)`, so the same job always maps to the same ids. Jobs whose samples
are all stored are skipped; the rest are generated in chunks and appended as each chunk
returns, so a killed run (`kill -9`, a dead server) loses at most one chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from charter.backends.base import Generator, GenerationRequest, SamplingParams
from charter.data.jsonl import RecordStore, stable_id


@dataclass
class Job:
    key: str  # stable content key, e.g. stable_id(prompt, role)
    request: GenerationRequest
    meta: dict[str, Any] = field(default_factory=dict)  # copied into each sample record


def sample_id(job_key: str, k: int) -> str:
    return stable_id(job_key, k)


def generate_into(store: RecordStore, gen: Generator, jobs: list[Job], params: SamplingParams,
                  chunk_size: int = 32, desc: str = "generate", progress: bool = False) -> int:
    """Generate the samples missing from `store`; returns how many records were written."""
    from tqdm.auto import tqdm

    todo = [j for j in jobs if any(sample_id(j.key, k) not in store for k in range(params.n))]
    written = 0
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="prompt", disable=not progress)
    for s in range(0, len(todo), chunk_size):
        chunk = todo[s:s + chunk_size]
        outs = gen.generate([j.request for j in chunk], params)
        for job, comps in zip(chunk, outs):
            for k, c in enumerate(comps):
                written += store.add({
                    "id": sample_id(job.key, k), "job": job.key, "sample": k, "text": c.text,
                    "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, **job.meta,
                })
        bar.update(len(chunk))
    bar.close()
    return written


def samples_of(store: RecordStore, job: Job, n: int) -> list[dict[str, Any]]:
    return [store.records[sample_id(job.key, k)] for k in range(n)]
