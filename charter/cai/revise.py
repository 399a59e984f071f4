"""SL-CAI: response -> critique under a sampled principle -> revision, for R rounds.

Each round builds the same conversation: the prompt, the current response, a critique
request, the model's critique, a revision request, and the model's revision, which
becomes the current response for the next round (with a fresh principle). Few-shot
transcripts go in front so a small model stays in the right role.

Two renderings of that one conversation:
- `chat`: messages go to the backend, which applies the model's chat template;
- `completion`: a plain `Human:`/`Assistant:` transcript for base or HH-style models,
  cut at the next `Human:` turn (stop strings), as in the paper.

Output: a chain record per prompt (every round), an SFT set (final or all revisions)
and a preference set (final revision chosen, initial response rejected).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm.auto import tqdm

from charter.backends import BackendConfig, make_generator
from charter.backends.base import Completion, GenerationRequest, Generator, SamplingParams
from charter.cai.principles import Principle, PrincipleSet, load_principles
from charter.chat import fallback_render
from charter.config import Config
from charter.data.jsonl import DataError, RecordStore, atomic_write_json, stable_id, write_jsonl
from charter.data.texts import read_conversations

Style = Literal["chat", "completion"]
# The next turn of any role ends a completion-style answer.
COMPLETION_STOPS = ["\n\nHuman:", "\n\nAssistant:", "\nHuman:"]


class ReviseConfig(Config):
    backend: BackendConfig
    prompts: list[str] = []
    prompts_file: str | None = None  # .txt (one per line) or .jsonl ({"prompt": str|messages} or {"messages"})
    limit: int | None = None
    principles: str | None = None  # None = charter/principles/default.yaml
    rounds: int = Field(1, ge=1, le=8)
    style: Style = "chat"
    fewshot: int = Field(1, ge=0)  # how many few-shot transcripts from the principles file to prepend
    sampling: SamplingParams = SamplingParams(temperature=0.7, max_new_tokens=128)
    sft_mode: Literal["final", "all"] = "final"
    drop_truncated: bool = True  # drop pairs whose final revision hit the token limit
    seed: int = 0
    chunk: int = Field(16, ge=1)  # prompts per resumable chunk
    out_dir: str = "runs/cai-revise"


# ---------------------------------------------------------------------------------------------
# inputs


def load_prompts(prompts: list[str], prompts_file: str | None, limit: int | None = None) -> list[list[dict]]:
    """Conversations to answer: the inline strings, then the file's (`charter.data.texts` rules)."""
    convs = [[{"role": "user", "content": p}] for p in prompts]
    convs += read_conversations(prompts_file) if prompts_file else []
    if not convs:
        raise DataError("no prompts: set `prompts` or `prompts_file`")
    return convs[:limit] if limit else convs


# ---------------------------------------------------------------------------------------------
# the chain


@dataclass
class ChainSettings:
    rounds: int = 1
    style: Style = "chat"
    fewshot: int = 1
    seed: int = 0


def _request(messages: list[dict], style: Style) -> GenerationRequest:
    if style == "completion":
        return GenerationRequest(prompt=fallback_render(messages, add_generation_prompt=True))
    return GenerationRequest(messages=messages)


def _params(params: SamplingParams, style: Style) -> SamplingParams:
    if style != "completion":
        return params
    return params.model_copy(update={"stop": list(dict.fromkeys(params.stop + COMPLETION_STOPS))})


def _gen(generator: Generator, convs: list[list[dict]], params: SamplingParams, style: Style,
         call: int = 0) -> list[Completion]:
    """One batched call; a seeded run gets a distinct seed per call so draft, critique and revision
    do not share random draws."""
    seed = None if params.seed is None else params.seed + 7919 * call
    outs = generator.generate([_request(c, style) for c in convs],
                              _params(params, style).model_copy(update={"n": 1, "seed": seed}))
    return [o[0] for o in outs]


def pick_principles(principles: PrincipleSet, conv_id: str, rounds: int, seed: int) -> list[Principle]:
    """Deterministic per conversation (so a resumed run draws the same), fresh each round."""
    return principles.sample(random.Random(stable_id("cai-principles", seed, conv_id)), rounds)


def with_fewshot(shots: list[dict], conv: list[dict]) -> list[dict]:
    """Few-shot turns go after any system message, before the real conversation."""
    n_sys = sum(1 for m in conv[:1] if m["role"] == "system")
    return conv[:n_sys] + shots + conv[n_sys:]


def critique_turns(prompt: list[dict], response: str, p: Principle) -> list[dict]:
    return prompt + [{"role": "assistant", "content": response}, {"role": "user", "content": p.critique}]


def revision_turns(critique_conv: list[dict], critique: str, p: Principle) -> list[dict]:
    return critique_conv + [{"role": "assistant", "content": critique}, {"role": "user", "content": p.revision}]


def run_chains(generator: Generator, convs: list[list[dict]], principles: PrincipleSet, params: SamplingParams,
               settings: ChainSettings, initial: list[str] | None = None) -> list[dict]:
    """Draft (unless `initial` is given) then `rounds` x (critique, revision), batched over convs.

    Returns one record per conversation with every round: principle, both requests,
    critique, revision and finish reasons.
    """
    shots = [m for t in principles.fewshot[:settings.fewshot] for m in t]
    ids = [stable_id(c) for c in convs]
    if initial is None:
        drafts = _gen(generator, convs, params, settings.style)
        current, first_finish = [d.text.strip() for d in drafts], [d.finish_reason for d in drafts]
    else:
        current, first_finish = list(initial), ["given"] * len(convs)
    picks = [pick_principles(principles, i, settings.rounds, settings.seed) for i in ids]
    records = [{"id": i, "prompt": c, "initial": r, "initial_finish": f, "rounds": []}
               for i, c, r, f in zip(ids, convs, current, first_finish)]
    for k in range(settings.rounds):
        crit_convs = [with_fewshot(shots, critique_turns(c, r, ps[k])) for c, r, ps in zip(convs, current, picks)]
        crits = _gen(generator, crit_convs, params, settings.style, call=2 * k + 1)
        rev_convs = [revision_turns(cc, cr.text.strip(), ps[k]) for cc, cr, ps in zip(crit_convs, crits, picks)]
        revs = _gen(generator, rev_convs, params, settings.style, call=2 * k + 2)
        for rec, ps, cr, rv in zip(records, picks, crits, revs):
            rec["rounds"].append({"round": k + 1, "principle": ps[k].id, "critique_request": ps[k].critique,
                                  "critique": cr.text.strip(), "revision_request": ps[k].revision,
                                  "revision": rv.text.strip(),
                                  "finish": {"critique": cr.finish_reason, "revision": rv.finish_reason}})
        current = [rv.text.strip() or cur for rv, cur in zip(revs, current)]  # an empty revision keeps the last
    for rec, cur in zip(records, current):
        rec["final"] = cur
    return records


# ---------------------------------------------------------------------------------------------
# emitting training sets


def sft_rows(records: list[dict], mode: Literal["final", "all"] = "final") -> list[dict]:
    rows = []
    for rec in records:
        texts = [rec["final"]] if mode == "final" else [r["revision"] for r in rec["rounds"]]
        rows += [{"messages": rec["prompt"] + [{"role": "assistant", "content": t}], "meta": {"chain": rec["id"]}}
                 for t in dict.fromkeys(texts) if t]
    return rows


def preference_rows(records: list[dict], meta: dict, drop_truncated: bool = True) -> tuple[list[dict], dict[str, int]]:
    """Final revision chosen, initial rejected; drops counted by reason."""
    rows, dropped = [], {"empty": 0, "unchanged": 0, "truncated": 0}
    for rec in records:
        if not rec["final"] or not rec["initial"]:
            dropped["empty"] += 1
        elif rec["final"] == rec["initial"]:
            dropped["unchanged"] += 1
        elif drop_truncated and rec["rounds"] and rec["rounds"][-1]["finish"]["revision"] == "length":
            dropped["truncated"] += 1
        else:
            rows.append({"prompt": rec["prompt"], "chosen": [{"role": "assistant", "content": rec["final"]}],
                         "rejected": [{"role": "assistant", "content": rec["initial"]}],
                         "meta": {**meta, "chain": rec["id"],
                                  "principles": [r["principle"] for r in rec["rounds"]]}})
    return rows, dropped


def run_revise(cfg: ReviseConfig, generator: Generator | None = None) -> dict:
    """The `charter cai revise` stage: resumable chains -> chains.jsonl, sft.jsonl, pairs.jsonl, summary.json."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    principles = load_principles(cfg.principles)
    convs = load_prompts(cfg.prompts, cfg.prompts_file, cfg.limit)
    generator = generator or make_generator(cfg.backend)
    settings = ChainSettings(cfg.rounds, cfg.style, cfg.fewshot, cfg.seed)
    with RecordStore(out / "chains.jsonl") as store:
        todo = [c for c in convs if stable_id(c) not in store]
        for s in tqdm(range(0, len(todo), cfg.chunk), desc="cai revise", disable=not todo):
            params = cfg.sampling.model_copy(update={"seed": None if cfg.sampling.seed is None else cfg.sampling.seed + s})
            for rec in run_chains(generator, todo[s:s + cfg.chunk], principles, params, settings):
                rec["meta"] = {"model": generator.name, "style": cfg.style, "principles_file": principles.source}
                store.add(rec)
        wanted = {stable_id(c) for c in convs}
        records = [r for rid, r in store.records.items() if rid in wanted]
    meta = {"model": generator.name, "source": "cai-revise", "config_hash": cfg.hash()}
    n_sft = write_jsonl(out / "sft.jsonl", sft_rows(records, cfg.sft_mode))
    pairs, dropped = preference_rows(records, meta, cfg.drop_truncated)
    n_pairs = write_jsonl(out / "pairs.jsonl", pairs)
    summary = {"prompts": len(records), "rounds": cfg.rounds, "sft_rows": n_sft, "pairs": n_pairs,
               "dropped": dropped, "resumed": len(convs) - len(todo),
               "mean_revision_chars": sum(len(r["final"]) for r in records) / max(len(records), 1),
               "mean_initial_chars": sum(len(r["initial"]) for r in records) / max(len(records), 1)}
    atomic_write_json(out / "summary.json", summary)
    return summary
