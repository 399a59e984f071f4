"""Distillation: constitution -> prompts -> teacher (chosen) / student (rejected) -> DPO pairs.

The teacher answers with the constitution in its system prompt; the student, the model we
will train, answers with no system prompt. Where they differ is the character, and DPO
learns that difference. Every generation is a record keyed by (prompt, sample, role) in
an append-only store under `out_dir`, so a re-run after any interruption continues where
it stopped. Pairs are then a pure function of the stored records.

Files in `out_dir`: expansion.jsonl, prompts.jsonl, teacher.jsonl, student.jsonl (stores),
pairs.jsonl, summary.json.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from charter.backends import BackendConfig, make_generator
from charter.backends.base import GenerationRequest, Generator, SamplingParams
from charter.config import Config
from charter.constitution import Constitution, load_constitution
from charter.constitution_prompt import strip_thinking, teacher_system_prompt, thinking_prefill
from charter.data.jsonl import RecordStore, atomic_write_json, stable_id, write_jsonl
from charter.stages.prompts import dedupe, expand_prompts, general_prompts
from charter.stages.records import Job, generate_into, samples_of

PAIR_FILTERS = ["empty", "no_think_end", "length", "unfinished", "too_long"]


class DistillConfig(Config):
    constitution: str  # path or library name
    teacher: BackendConfig
    student: BackendConfig | None = None  # None: the teacher's backend and model, without the system prompt
    expander: BackendConfig | None = None  # prompt expansion; None: the teacher's
    teacher_name: str | None = None  # name in the teacher's system prompt; None: the constitution's name
    student_name: str | None = None  # replaces the teacher's self-name in chosen; None: no replacement
    self_names: list[str] = []  # other names the teacher calls itself (e.g. its model name)
    # prompts
    prompts_per_trait: int = 50
    expansion_samples: int = 4
    expansion_rounds: int = 3
    expansion_sampling: SamplingParams = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=512, seed=0)
    general_prompts: str | None = None  # file of general chat prompts (.txt, LIMA-style .jsonl)
    general_limit: int | None = None
    # teacher / student
    samples: int = 5  # K samples per prompt, for each side
    sampling: SamplingParams = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1,
                                              max_new_tokens=4096, seed=0)
    think: bool = False  # teacher thinking prefill, stripped up to `think_end`
    think_start: str = "<think>"
    think_end: str = "</think>"
    # pairs
    max_pair_tokens: int | None = 1024  # templated prompt+answer tokens, per side
    tokenizer: str | None = None  # for max_pair_tokens; None: the student's (or teacher's) hf model
    chunk_size: int = 32  # prompts per generate call: at most this much work is lost on a kill


# ---------------------------------------------------------------- pair filters (pure)

def ends_sentence(text: str) -> bool:
    from charter.filters import Segment, UnfinishedFilter, unfinished

    return unfinished(Segment(text.strip()), UnfinishedFilter()).passed


def replace_names(text: str, names: list[str], new: str) -> str:
    """Whole-word replacement of the teacher's self-names (longest first, so 'GLM 4.5' beats 'GLM')."""
    for name in sorted({n for n in names if n and n != new}, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", new, text)
    return text


def pair_failure(chosen: str | None, c_finish: str, rejected: str, r_finish: str,
                 n_tokens: int | None, max_tokens: int | None) -> str | None:
    """The first filter (in PAIR_FILTERS order) the pair fails, or None. `chosen` None = no think end."""
    if (chosen is not None and not chosen.strip()) or not rejected.strip():
        return "empty"
    if chosen is None:
        return "no_think_end"
    if c_finish == "length" or r_finish == "length":
        return "length"
    if not ends_sentence(chosen) or not ends_sentence(rejected):
        return "unfinished"
    if max_tokens is not None and n_tokens is not None and n_tokens > max_tokens:
        return "too_long"
    return None


@dataclass
class PairMaker:
    """Teacher and student samples for one prompt -> a DPO pair, or the filter that dropped it.

    Shared by `run_distill` and the pipeline's separate teacher/student/pairs stages, so both
    apply the same SPEC §1 filters and name replacement.
    """

    teacher_name: str
    student_name: str
    self_names: list[str] = field(default_factory=list)
    prefill: str = ""  # the teacher's thinking prefill ("" = no thinking)
    think_end: str = "</think>"
    tokenizer: Any = None  # counts templated tokens for max_pair_tokens (None = no length filter)
    max_pair_tokens: int | None = None

    def __call__(self, prompt: str, sample: int, teacher: dict[str, Any],
                 student: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        chosen = strip_thinking(teacher["text"], self.prefill, self.think_end) if self.prefill else teacher["text"].strip()
        if chosen is not None:
            chosen = replace_names(chosen, [self.teacher_name, *self.self_names], self.student_name).strip()
        rejected = student["text"].strip()
        n_tok = None
        if self.tokenizer is not None and chosen:
            n_tok = max(_templated_len(self.tokenizer, prompt, chosen), _templated_len(self.tokenizer, prompt, rejected))
        why = pair_failure(chosen, teacher["finish_reason"], rejected, student["finish_reason"], n_tok,
                           self.max_pair_tokens)
        if why:
            return None, why
        return {"id": stable_id(prompt, sample, "pair"),
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}, None


def build_pairs(make: PairMaker, prompts: Mapping[str, dict[str, Any]],
                teacher: Mapping[tuple[str, int], dict[str, Any]], student: Mapping[tuple[str, int], dict[str, Any]],
                provenance: dict[str, Any]) -> tuple[list[dict[str, Any]], Counter]:
    """Pair each teacher sample (in the order given) with the student's sample for the same
    (prompt id, k) -> (kept pairs, count per filter / "kept" / "missing_student").

    The one pairing loop for `run_distill` and the pipeline's pairs stage, so every pair's
    `meta` carries the same provenance: `provenance` plus the prompt's id, source and trait.
    """
    counts: Counter = Counter()
    pairs = []
    for (pid, k), t in teacher.items():
        s = student.get((pid, k))
        if s is None:
            counts["missing_student"] += 1
            continue
        p = prompts[pid]
        pair, why = make(p["prompt"], k, t, s)
        counts[why or "kept"] += 1
        if pair:
            pair["meta"] = {**provenance, "prompt_id": pid, "source": p.get("source"),
                            "trait_index": p.get("trait_index"), "sample": k, "teacher_id": t["id"],
                            "student_id": s["id"]}
            pairs.append(pair)
    return pairs, counts


# ---------------------------------------------------------------- stage

def _generators(cfg: DistillConfig) -> tuple[Generator, Generator, Generator]:
    """Teacher, student and expander; one instance per distinct backend config (one model in memory)."""
    cache: dict[str, Generator] = {}

    def get(b: BackendConfig) -> Generator:
        if b.hash() not in cache:
            cache[b.hash()] = make_generator(b)
        return cache[b.hash()]

    return get(cfg.teacher), get(cfg.student or cfg.teacher), get(cfg.expander or cfg.teacher)


def _pair_tokenizer(cfg: DistillConfig, gens: tuple[Generator, ...]):
    if cfg.max_pair_tokens is None:
        return None
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    for g in (gens[1], gens[0]):  # student first: its template is what training will see
        if getattr(g, "tokenizer", None) is not None:
            return g.tokenizer
    return None


def _templated_len(tokenizer, prompt: str, answer: str) -> int:
    from charter.chat import render_text

    text = render_text(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


_RUNTIME_KEYS = {"chunk_size", "concurrency", "timeout", "max_retries", "retry_backoff", "retry_max_wait", "batch_size"}


def _content(cfg_dict: Any) -> Any:
    """The config minus knobs that do not change what is generated (so a resume may retune them)."""
    if isinstance(cfg_dict, dict):
        return {k: _content(v) for k, v in cfg_dict.items() if k not in _RUNTIME_KEYS}
    return cfg_dict


def _check_resume(cfg: DistillConfig, out: Path) -> None:
    """Stored records are keyed by prompt/sample/role only: refuse to mix them with a different config."""
    import yaml

    from charter.config import ConfigError

    saved = out / "config.yaml"
    if saved.exists() and _content(yaml.safe_load(saved.read_text())) != _content(cfg.to_dict()):
        raise ConfigError(f"{out}: holds records from a different distill config ({saved}); "
                          "use a new output folder, or delete this one to start over")


def run_distill(cfg: DistillConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Run (or resume) prompts -> teacher -> student -> pairs; returns the pairs JSONL path."""
    const: Constitution = load_constitution(cfg.constitution)  # bad input fails before anything is written
    general = general_prompts(cfg.general_prompts, cfg.general_limit) if cfg.general_prompts else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    cfg.save(out / "config.yaml")
    teacher_name = cfg.teacher_name or const.name
    student_name = cfg.student_name or teacher_name
    system = teacher_system_prompt(const, teacher_name)
    prefill = thinking_prefill(const, teacher_name, cfg.think_start) if cfg.think else ""
    teacher, student, expander = _generators(cfg)
    summary: dict[str, Any] = {}

    # 1. prompts
    with RecordStore(out / "expansion.jsonl") as store:
        prompts, pcounts = expand_prompts(const, expander, store, cfg.prompts_per_trait, cfg.expansion_samples,
                                          cfg.expansion_rounds, cfg.expansion_sampling, cfg.chunk_size, progress)
    if cfg.general_prompts:
        pcounts["general"] = len(general)
        prompts += general
    prompts = dedupe(prompts)
    write_jsonl(out / "prompts.jsonl", prompts)
    summary["prompts"] = {**pcounts, "total": len(prompts)}

    # 2. teacher and 3. student: K samples per prompt, one record per (prompt, sample, role)
    params = cfg.sampling.model_copy(update={"n": cfg.samples})
    sides = {
        "teacher": (teacher, lambda p: GenerationRequest(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": p}], prefill=prefill)),
        "student": (student, lambda p: GenerationRequest(messages=[{"role": "user", "content": p}])),
    }
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for role, (gen, make_req) in sides.items():
        jobs = [Job(stable_id(p["prompt"], role), make_req(p["prompt"]), {"role": role, "prompt_id": p["id"]})
                for p in prompts]
        with RecordStore(out / f"{role}.jsonl") as store:
            generate_into(store, gen, jobs, params, cfg.chunk_size, role, progress)
            samples[role] = {p["id"]: samples_of(store, j, cfg.samples) for p, j in zip(prompts, jobs)}

    # 4. pairs
    tok = _pair_tokenizer(cfg, (teacher, student))
    provenance = {
        "teacher": teacher.name, "student": student.name, "constitution": const.name,
        "constitution_hash": const.hash(), "sampling": params.model_dump(), "think": cfg.think,
        "teacher_name": teacher_name, "student_name": student_name,
    }
    make = PairMaker(teacher_name, student_name, cfg.self_names, prefill, cfg.think_end, tok, cfg.max_pair_tokens)
    by_key = {role: {(p["id"], k): rec for p in prompts for k, rec in enumerate(samples[role][p["id"]])}
              for role in sides}
    pairs, counts = build_pairs(make, {p["id"]: p for p in prompts}, by_key["teacher"], by_key["student"], provenance)
    pairs_path = out / "pairs.jsonl"
    write_jsonl(pairs_path, pairs)
    summary["pairs"] = {"total": sum(counts.values()), **{f: counts[f] for f in PAIR_FILTERS}, "kept": counts["kept"],
                        "length_filter": "skipped (no tokenizer)" if tok is None and cfg.max_pair_tokens else "on"}
    summary["provenance"] = provenance
    atomic_write_json(out / "summary.json", summary)
    return pairs_path


def format_summary(summary: dict[str, Any]) -> str:
    """Counts per step and per filter, for the CLI."""
    pr, pa = summary["prompts"], summary["pairs"]
    lines = ["prompts: " + ", ".join(f"{k} {v}" for k, v in pr.items()),
             f"pairs: {pa['total']} candidates"]
    lines += [f"  dropped {f:<13} {pa[f]}" for f in PAIR_FILTERS]
    lines.append(f"  kept            {pa['kept']}")
    return "\n".join(lines)
