"""Distillation: constitution -> prompts -> teacher (chosen) / student (rejected) -> DPO pairs.

The teacher answers with the constitution in its system prompt; the student, the model we
will train, answers with no system prompt. Where they differ is the character, and DPO
learns that difference. Every generation is a record keyed by (prompt, sample, role) in
an append-only store under `out_dir`, so a re-run after any interruption continues where
it stopped. Pairs are then a pure function of the stored records.

The steps (`expand`, `answer`, `make_pairs`) take typed settings and explicit inputs and
outputs; `charter distill` (`run_distill`) and the `charter run` stages both call them.
Files in `out_dir`: expansion.jsonl, prompts.jsonl, teacher.jsonl, student.jsonl (stores),
pairs.jsonl, summary.json.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

from charter.backends import BackendConfig, make_generator
from charter.backends.base import GenerationRequest, Generator, SamplingParams
from charter.chat import render_text
from charter.config import Config, ConfigError
from charter.constitution import Constitution, load_constitution
from charter.constitution_prompt import strip_thinking, teacher_system_prompt, thinking_prefill
from charter.data.jsonl import RecordStore, atomic_write_json, stable_id, write_jsonl
from charter.filters import Segment, UnfinishedFilter, unfinished
from charter.models import CONFIG_FILES, load_tokenizer, local_folder
from charter.stages.prompts import dedupe, expand_prompts, general_prompts
from charter.stages.records import Job, generate_into, samples_of

C = TypeVar("C", bound=Config)
PAIR_FILTERS = ["empty", "no_think_end", "length", "unfinished", "too_long"]


class PromptSettings(Config):
    """How the prompts step expands a constitution's seed questions (SPEC §1)."""

    prompts_per_trait: int = 50
    expansion_samples: int = 4
    expansion_rounds: int = 3
    expansion_sampling: SamplingParams = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=512, seed=0)
    general_prompts: str | None = None  # file of general chat prompts (.txt, LIMA-style .jsonl)
    general_limit: int | None = None
    chunk_size: int = 32  # prompts per generate call: at most this much work is lost on a kill


class AnswerSettings(Config):
    """How the teacher and the student answer each prompt: K samples, sampling, thinking prefill."""

    samples: int = 5  # K samples per prompt, for each side
    sampling: SamplingParams = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1,
                                              max_new_tokens=4096, seed=0)
    think: bool = False  # teacher thinking prefill, stripped up to `think_end`
    think_start: str = "<think>"
    think_end: str = "</think>"
    chunk_size: int = 32

    def params(self, seed: int | None) -> SamplingParams:
        return self.sampling.model_copy(update={"n": self.samples, "seed": seed})


class PairSettings(Config):
    """Which teacher/student samples become DPO pairs."""

    max_pair_tokens: int | None = 1024  # templated prompt+answer tokens, per side
    tokenizer: str | None = None  # for max_pair_tokens; None: the student's (or teacher's) model
    self_names: list[str] = []  # other names the teacher calls itself (e.g. its model name)


class DistillConfig(PromptSettings, AnswerSettings, PairSettings):
    """`charter distill`: one flat file, the three steps' settings plus the constitution and backends."""

    constitution: str  # path or library name
    teacher: BackendConfig
    student: BackendConfig | None = None  # None: the teacher's backend and model, without the system prompt
    expander: BackendConfig | None = None  # prompt expansion; None: the teacher's
    teacher_name: str | None = None  # name in the teacher's system prompt; None: the constitution's name
    student_name: str | None = None  # replaces the teacher's self-name in chosen; None: the teacher's name


def settings_part(cfg: Config, cls: type[C]) -> C:
    """The fields of `cfg` that `cls` declares, as a `cls` (a step's settings out of a flat config)."""
    return cls.model_validate({k: getattr(cfg, k) for k in cls.model_fields})


@dataclass(frozen=True)
class Names:
    teacher: str  # the name in the teacher's system prompt
    student: str  # replaces the teacher's self-names in chosen answers

    @classmethod
    def of(cls, constitution: Constitution, teacher: str | None = None, student: str | None = None) -> "Names":
        name = teacher or constitution.name
        return cls(name, student or name)


# ---------------------------------------------------------------- pair filters (pure)

def ends_sentence(text: str) -> bool:
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

    Used by `make_pairs`, the one pairing step of `charter distill` and `charter run`.
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

    Every pair's `meta` carries `provenance` plus the prompt's id, source and trait.
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


# ---------------------------------------------------------------- steps (shared by `charter distill` and `charter run`)

def expand(settings: PromptSettings, constitution: Constitution, expander: Generator | None, out: Path,
           progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Seed questions + generated ones (+ general prompts) -> `out/prompts.jsonl`; resumable via `expansion.jsonl`."""
    general = general_prompts(settings.general_prompts, settings.general_limit) if settings.general_prompts else []
    with RecordStore(out / "expansion.jsonl") as store:
        prompts, counts = expand_prompts(constitution, expander, store, settings.prompts_per_trait,
                                         settings.expansion_samples, settings.expansion_rounds,
                                         settings.expansion_sampling, settings.chunk_size, progress)
    if settings.general_prompts:
        counts["general"] = len(general)
        prompts += general
    prompts = dedupe(prompts)
    write_jsonl(out / "prompts.jsonl", prompts)
    return prompts, {**counts, "total": len(prompts)}


def teacher_turns(settings: AnswerSettings, constitution: Constitution, names: Names) -> tuple[list[dict], str]:
    """The teacher's system message and thinking prefill ("" without thinking)."""
    system = [{"role": "system", "content": teacher_system_prompt(constitution, names.teacher)}]
    prefill = thinking_prefill(constitution, names.teacher, settings.think_start) if settings.think else ""
    return system, prefill


def answer(settings: AnswerSettings, generator: Generator, prompts: list[dict[str, Any]], role: str, out: Path,
           seed: int | None, system: list[dict] = (), prefill: str = "", progress: bool = True) -> list[dict]:
    """K samples per prompt into the resumable store `out` (one record per prompt, sample and role)."""
    jobs = [Job(stable_id(p["prompt"], role),
                GenerationRequest(messages=[*system, {"role": "user", "content": p["prompt"]}], prefill=prefill),
                {"role": role, "prompt_id": p["id"], "prompt": p["prompt"], "model": generator.name})
            for p in prompts]
    with RecordStore(out) as store:
        generate_into(store, generator, jobs, settings.params(seed), settings.chunk_size, role, progress)
        return [s for j in jobs for s in samples_of(store, j, settings.samples)]


def pair_tokenizer(settings: PairSettings, fallback: Callable[[], Any] = lambda: None,
                   chat_template: str | None = None):
    """What counts templated tokens for `max_pair_tokens`: the configured tokenizer, else `fallback()`."""
    if settings.max_pair_tokens is None:
        return None
    if settings.tokenizer:
        return load_tokenizer(local_folder(settings.tokenizer, CONFIG_FILES), chat_template)
    return fallback()


def make_pairs(settings: PairSettings, answers: AnswerSettings, constitution: Constitution, names: Names,
               prompts: list[dict], teacher: list[dict], student: list[dict], seed: int | None, tokenizer: Any,
               out: Path) -> tuple[Counter, dict[str, Any]]:
    """Chosen = teacher, rejected = student -> `out/pairs.jsonl`; returns (counts per filter, provenance)."""
    provenance = {"teacher": teacher[0]["model"] if teacher else None,
                  "student": student[0]["model"] if student else None,
                  "constitution": constitution.name, "constitution_hash": constitution.hash(),
                  "sampling": answers.params(seed).model_dump(), "think": answers.think,
                  "teacher_name": names.teacher, "student_name": names.student}
    prefill = teacher_turns(answers, constitution, names)[1]
    make = PairMaker(names.teacher, names.student, settings.self_names, prefill, answers.think_end, tokenizer,
                     settings.max_pair_tokens)
    side = {r: {(a["prompt_id"], a["sample"]): a for a in recs} for r, recs in (("teacher", teacher), ("student", student))}
    pairs, counts = build_pairs(make, {p["id"]: p for p in prompts}, dict(sorted(side["teacher"].items())),
                                side["student"], provenance)
    write_jsonl(out / "pairs.jsonl", pairs)
    return counts, provenance


# ---------------------------------------------------------------- `charter distill`

def _generators(cfg: DistillConfig) -> tuple[Generator, Generator, Generator]:
    """Teacher, student and expander; one instance per distinct backend config (one model in memory)."""
    cache: dict[str, Generator] = {}

    def get(b: BackendConfig) -> Generator:
        if b.hash() not in cache:
            cache[b.hash()] = make_generator(b)
        return cache[b.hash()]

    return get(cfg.teacher), get(cfg.student or cfg.teacher), get(cfg.expander or cfg.teacher)


def _templated_len(tokenizer, prompt: str, answer: str) -> int:
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
    saved = out / "config.yaml"
    if saved.exists() and _content(yaml.safe_load(saved.read_text())) != _content(cfg.to_dict()):
        raise ConfigError(f"{out}: holds records from a different distill config ({saved}); "
                          "use a new output folder, or delete this one to start over")


def run_distill(cfg: DistillConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Run (or resume) prompts -> teacher -> student -> pairs; returns the pairs JSONL path."""
    const: Constitution = load_constitution(cfg.constitution)  # bad input fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    cfg.save(out / "config.yaml")
    names = Names.of(const, cfg.teacher_name, cfg.student_name)
    teacher, student, expander = _generators(cfg)
    prompts, pcounts = expand(settings_part(cfg, PromptSettings), const, expander, out, progress)
    answers = settings_part(cfg, AnswerSettings)
    system, prefill = teacher_turns(answers, const, names)
    seed = cfg.sampling.seed
    t = answer(answers, teacher, prompts, "teacher", out / "teacher.jsonl", seed, system, prefill, progress)
    s = answer(answers, student, prompts, "student", out / "student.jsonl", seed, progress=progress)
    pairing = settings_part(cfg, PairSettings)
    tok = pair_tokenizer(pairing, lambda: next((g.tokenizer for g in (student, teacher)  # student's: what training sees
                                                if getattr(g, "tokenizer", None) is not None), None))
    counts, provenance = make_pairs(pairing, answers, const, names, prompts, t, s, seed, tok, out)
    summary = {"prompts": pcounts, "provenance": provenance,
               "pairs": {"total": sum(counts.values()), **{f: counts[f] for f in PAIR_FILTERS}, "kept": counts["kept"],
                         "length_filter": "skipped (no tokenizer)" if tok is None and cfg.max_pair_tokens else "on"}}
    atomic_write_json(out / "summary.json", summary)
    return out / "pairs.jsonl"


def format_summary(summary: dict[str, Any]) -> str:
    """Counts per step and per filter, for the CLI."""
    pr, pa = summary["prompts"], summary["pairs"]
    lines = ["prompts: " + ", ".join(f"{k} {v}" for k, v in pr.items()),
             f"pairs: {pa['total']} candidates"]
    lines += [f"  dropped {f:<13} {pa[f]}" for f in PAIR_FILTERS]
    lines.append(f"  kept            {pa['kept']}")
    return "\n".join(lines)
