"""Introspection stage: self-reflection + self-interaction -> quality filters -> SFT chat JSONL.

The steps (`reflect`, `interact`, `filter_and_mix`) take typed settings and explicit inputs
and outputs; `charter introspect` (`run_introspect`) and the `charter run` stages both call them.
Layout of `out_dir`:

    reflection.jsonl     raw generations, one per (prompt, sample)   } resumable RecordStores,
    interaction.jsonl    raw conversations, one per (variant, index) } keyed by stable ids
    *.provenance.json    the model, seed and sampling that made them (a resume must match)
    kept.jsonl / rejected.jsonl     filtered rows (rejected ones with every reason)
    filter_report.json / .md        pass rate per filter
    sft.jsonl            {"messages": [...]} rows, mixed and shuffled   <- returned
    sft_stats.json       counts and token statistics
    config.yaml          the config of the last run

Resumability: `charter.stages.records.generate_resumable` (fixed chunks of `chunk_size` items in
plan order, each seeded from the run seed and its ids): a killed and re-run job equals an
uninterrupted one, record for record, as long as `seed`, `chunk_size` and the backend agree.
"""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from charter.backends import BackendConfig, make_generator
from charter.backends.base import Generator, SamplingParams
from charter.chat import encode_chat, render_prompt
from charter.config import Config, ConfigError
from charter.constitution import Constitution, load_constitution
from charter.data.jsonl import RecordStore, atomic_write_json, atomic_write_text, write_jsonl
from charter.filters import PLACEHOLDER_RE, FilterConfig, FilterResult, FilterRow, Segment, apply_filters, format_table
from charter.models import CONFIG_FILES, load_tokenizer, local_folder
from charter.stages import interaction as inter
from charter.stages import reflection as refl
from charter.stages.records import generate_resumable

KINDS = ("reflection", "interaction")


def _sampling(max_new_tokens: int) -> SamplingParams:
    """SPEC §1 sampling: T 0.7, top_p 0.95, repetition penalty 1.1."""
    return SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=max_new_tokens)


class ReflectionConfig(Config):
    enabled: bool = True
    samples_per_prompt: int = Field(1000, ge=1)  # paper: 10 prompts x 1000
    prompts_file: str | None = None  # .txt (one per line) / .jsonl {"prompt"} / .json|.yaml list; None = ours
    sampling: SamplingParams = _sampling(2048)


class InteractionConfig(Config):
    enabled: bool = True
    free: int = Field(1000, ge=0)  # conversations with the free guidance
    leading: int = Field(1000, ge=0)  # conversations with the introspective guidance and self-aware openers
    turns: int = Field(10, ge=1)  # generated turns per conversation (the opener is not counted)
    greetings_file: str | None = None  # replaces GREETINGS
    self_aware_greetings_file: str | None = None  # replaces SELF_AWARE_GREETINGS (leading only)
    views: Literal["first", "both"] = "both"  # both: each speaker's view is a row; every turn trained once
    # drop (default): the trained rows carry no system prompt, like reflection, so the character is
    # learned as the default rather than as a response to its own description; keep: store it.
    system_prompt: Literal["drop", "keep"] = "drop"
    max_context_tokens: int | None = None  # None: the model's max positions, when the backend exposes it
    sampling: SamplingParams = _sampling(1024)


class MixConfig(Config):
    # None: every kept row. Otherwise weights per kind (normalised); the largest set that honours
    # them is taken, e.g. {reflection: 1, interaction: 1} -> equal numbers of each.
    proportions: dict[Literal["reflection", "interaction"], float] | None = None
    max_rows: int | None = None


class IntrospectFilters(FilterConfig):
    """The quality filters, with the placeholder filter always on."""

    @model_validator(mode="after")
    def _placeholders_on(self) -> "IntrospectFilters":
        if not self.placeholders.enabled:
            raise ValueError("placeholders cannot be disabled: a row with an unformatted {...} "
                             "placeholder must never reach training")
        return self


class FilterSettings(IntrospectFilters):
    """What `filter_and_mix` reads: the filters and the mix (the run config's `filter` section)."""

    mix: MixConfig = MixConfig()


class IntrospectConfig(Config):
    constitution: str  # path or library name
    assistant_name: str | None = None  # None: the constitution's name
    backend: BackendConfig = BackendConfig()  # the DPO-trained model
    tokenizer: str | None = None  # for token counts; None: the generator's own tokenizer if it has one
    seed: int = 0
    chunk_size: int = Field(64, ge=1)  # items per generate call and per resume unit
    reflection: ReflectionConfig = ReflectionConfig()
    interaction: InteractionConfig = InteractionConfig()
    filters: IntrospectFilters = IntrospectFilters()
    mix: MixConfig = MixConfig()


# ---------------------------------------------------------------------------------------------
# generation (resumable)


def _check_provenance(path: Path, fingerprint: dict) -> None:
    """Refuse to resume records made by another model or with other sampling."""
    if path.exists():
        old = json.loads(path.read_text())
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ConfigError(f"{path}: existing records were generated with different {', '.join(diff)}; "
                              f"use a fresh output folder or delete the old records")
    else:
        atomic_write_json(path, fingerprint)


# ---------------------------------------------------------------------------------------------
# rows, filters, mix


def _segment(turn: dict) -> Segment:
    return Segment(turn["text"], turn.get("finish_reason"), turn.get("tokens"))


def reflection_filter_rows(records: list[dict]) -> list[FilterRow]:
    return [FilterRow(r["id"], [_segment(r)], {"id": r["id"], "kind": "reflection",
                                                "messages": refl.reflection_row(r)}) for r in records]


def introspection_rows(records: dict[str, list[dict]], interaction: InteractionConfig) -> list[FilterRow]:
    """Reflection and interaction records -> filter rows, in id order (a resumed store appends in another)."""
    def by_id(kind: str) -> list[dict]:
        return sorted(records.get(kind, []), key=lambda r: r["id"])

    return reflection_filter_rows(by_id("reflection")) + \
        interaction_filter_rows(by_id("interaction"), interaction.views, interaction.system_prompt == "keep")


def interaction_filter_rows(records: list[dict], views: str, keep_system: bool) -> list[FilterRow]:
    """One row per stored view; quality filters see every generated turn in it, dedup only its own."""
    rows = []
    for r in records:
        for speaker, msgs in inter.interaction_rows(r, views, keep_system):
            own = [t for t in r["turns"] if t["speaker"] == speaker]
            n_turns = sum(1 for m in msgs if m["role"] != "system") - (1 if speaker == "a" else 0)
            shown = r["turns"][:n_turns]
            rows.append(FilterRow(f"{r['id']}:{speaker}", [_segment(t) for t in shown],
                                  {"id": f"{r['id']}:{speaker}", "kind": "interaction", "variant": r["variant"],
                                   "speaker": speaker, "speaker_turns": len(own), "messages": msgs},
                                  dedup_text="\n".join(t["text"] for t in own)))
    return rows


def assert_no_placeholders(rows: list[dict]) -> None:
    """Write-time guard for the reference bug: a literal `{NAME}` in training data."""
    for row in rows:
        for i, m in enumerate(row["messages"]):
            hit = PLACEHOLDER_RE.search(m["content"])
            if hit:
                raise AssertionError(f"row {row.get('id')}: message {i} ({m['role']}) contains an unformatted "
                                     f"placeholder {hit.group(0)!r}")


def mix_rows(kept: dict[str, list[dict]], cfg: MixConfig, seed: int) -> list[dict]:
    """Pick rows per kind at the configured proportions, then shuffle; deterministic given `seed`."""
    rng = random.Random(seed)
    pools = {k: sorted(v, key=lambda r: r["id"]) for k, v in kept.items()}
    for k in sorted(pools):
        rng.shuffle(pools[k])
    if cfg.proportions is None:
        chosen = {k: len(v) for k, v in pools.items()}
    else:
        w = {k: p for k, p in cfg.proportions.items() if p > 0}
        if not w:
            raise ConfigError("mix.proportions: at least one weight must be > 0")
        empty = [k for k in w if not pools.get(k)]
        if empty:
            print(f"introspect: warning: mix.proportions weights {empty} but no such rows were kept, "
                  f"so the proportional mix is empty")
        total_w = sum(w.values())
        # largest total T with round(T * w_k / total_w) <= available_k for every kind
        total = min(len(pools.get(k, [])) * total_w / p for k, p in w.items())
        chosen = {k: min(len(pools.get(k, [])), int(total * p / total_w + 1e-9)) for k, p in w.items()}
    if cfg.max_rows is not None and sum(chosen.values()) > cfg.max_rows:
        scale = cfg.max_rows / sum(chosen.values())
        chosen = {k: int(n * scale) for k, n in chosen.items()}
    rows = [r for k in sorted(chosen) for r in pools.get(k, [])[:chosen[k]]]
    rng.shuffle(rows)
    return rows


def sft_stats(rows: list[dict], tokenizer: Any = None) -> dict[str, Any]:
    """Counts per kind and token statistics (templated tokens and trainable tokens) when a tokenizer is known."""
    stats: dict[str, Any] = {"rows": len(rows), "by_kind": {k: sum(r["kind"] == k for r in rows) for k in KINDS}}
    if tokenizer is not None and rows:
        encs = [encode_chat(tokenizer, r["messages"]) for r in rows]
        lens = [len(e) for e in encs if e is not None]
        trainable = [e.n_trainable for e in encs if e is not None]
        stats["tokens"] = {"total": sum(lens), "mean": statistics.fmean(lens), "median": statistics.median(lens),
                           "max": max(lens), "trainable_total": sum(trainable)}
    elif rows:
        chars = [sum(len(m["content"]) for m in r["messages"]) for r in rows]
        stats["chars"] = {"total": sum(chars), "mean": statistics.fmean(chars), "max": max(chars)}
    return stats


# ---------------------------------------------------------------------------------------------
# steps (shared by `charter introspect` and `charter run`)


def tokenizer_for(name: str | None, generator: Generator) -> Any:
    """The configured tokenizer (a folder or Hub id), else the generator's own, if it has one."""
    return load_tokenizer(local_folder(name, CONFIG_FILES)) if name else getattr(generator, "tokenizer", None)


def _context_fits(settings: InteractionConfig, generator: Generator,
                  tokenizer: Any) -> Callable[[list[dict]], bool] | None:
    """`fits(messages)`: prompt tokens + the turn's new tokens stay within the context window."""
    limit = settings.max_context_tokens
    if limit is None:
        model_cfg = getattr(getattr(generator, "model", None), "config", None)
        limit = getattr(model_cfg, "max_position_embeddings", None)
    if limit is not None and tokenizer is None and settings.max_context_tokens is not None:
        raise ConfigError("interaction.max_context_tokens needs a tokenizer to count with: set `tokenizer` "
                          "(the backend does not expose one)")
    if limit is None or tokenizer is None:
        return None
    budget = limit - settings.sampling.max_new_tokens
    return lambda msgs: len(tokenizer(render_prompt(tokenizer, msgs), add_special_tokens=False)["input_ids"]) <= budget


def reflection_plan(settings: ReflectionConfig, constitution: Constitution, name: str) -> list:
    if not settings.enabled:
        return []
    prompts = refl.load_text_list(settings.prompts_file) if settings.prompts_file else refl.REFLECTION_PROMPTS
    return refl.plan_reflection(refl.reflection_system_prompt(constitution, name), prompts, settings.samples_per_prompt)


def interaction_plan(settings: InteractionConfig, constitution: Constitution, name: str) -> list:
    if not settings.enabled:
        return []
    greet = refl.load_text_list(settings.greetings_file, "greeting") if settings.greetings_file else None
    aware = (refl.load_text_list(settings.self_aware_greetings_file, "greeting")
             if settings.self_aware_greetings_file else None)
    items: list = []
    for variant, count in (("free", settings.free), ("leading", settings.leading)):
        system = inter.interaction_system_prompt(constitution, name, variant)
        items += inter.plan_interaction(system, variant, count, inter.greetings_for(variant, greet, aware),
                                        settings.turns)
    return items


def _fingerprint(generator: Generator, seed: int, chunk_size: int, sampling: SamplingParams) -> dict:
    return {"model": generator.name, "seed": seed, "chunk_size": chunk_size, "sampling": sampling.model_dump()}


def reflect(settings: ReflectionConfig, items: list, generator: Generator, seed: int, chunk_size: int,
            out: Path) -> list[dict]:
    """Generate (or resume) the reflections of `reflection_plan` into `out/reflection.jsonl`."""
    _check_provenance(out / "reflection.provenance.json", _fingerprint(generator, seed, chunk_size, settings.sampling))
    with RecordStore(out / "reflection.jsonl") as store:
        generate_resumable(store, items, chunk_size, seed,
                           lambda chunk, s: refl.generate_reflections(generator, chunk, settings.sampling, s),
                           "reflection")
        return [store.records[it.id] for it in items]


def interact(settings: InteractionConfig, items: list, generator: Generator, seed: int, chunk_size: int,
             out: Path, tokenizer: Any = None) -> list[dict]:
    """Generate (or resume) the self-conversations of `interaction_plan` into `out/interaction.jsonl`."""
    _check_provenance(out / "interaction.provenance.json", _fingerprint(generator, seed, chunk_size, settings.sampling))
    fits = _context_fits(settings, generator, tokenizer)
    with RecordStore(out / "interaction.jsonl") as store:
        generate_resumable(store, items, chunk_size, seed,
                           lambda chunk, s: inter.converse(generator, chunk, settings.turns, settings.sampling, s, fits),
                           "interaction")
        records = [store.records[it.id] for it in items]
    stopped = sum(1 for r in records if r["stopped"])
    if stopped:
        print(f"introspect: warning: {stopped}/{len(records)} conversations stopped early because a view no "
              f"longer fit the context (interaction.max_context_tokens / sampling.max_new_tokens)")
    return records


def filter_and_mix(settings: FilterSettings, rows: list[FilterRow], seed: int, out: Path,
                   tokenizer: Any = None) -> dict[str, Any]:
    """Quality filters, then the mix -> `out/sft.jsonl` (+ kept, rejected, filter report, stats); returns the stats."""
    result = apply_filters(rows, settings)
    _write_filter_outputs(out, result)
    kept: dict[str, list[dict]] = {k: [] for k in KINDS}
    for r in result.kept:
        kept[r.payload["kind"]].append(r.payload)
    sft = mix_rows(kept, settings.mix, seed)
    assert_no_placeholders(sft)
    write_jsonl(out / "sft.jsonl", ({"messages": r["messages"]} for r in sft))
    stats = {**sft_stats(sft, tokenizer), "filters": {"total": result.total, "kept": len(result.kept)}}
    atomic_write_json(out / "sft_stats.json", stats)
    print(f"introspect: {stats['rows']} SFT rows {stats['by_kind']}, kept {len(result.kept)}/{result.total} "
          f"after filters" + (f", tokens {stats['tokens']}" if "tokens" in stats else ""))
    if not sft:
        print(f"introspect: warning: no SFT rows; see {out / 'filter_report.md'} and {out / 'rejected.jsonl'}")
    return stats


# ---------------------------------------------------------------------------------------------
# `charter introspect`


def run_introspect(cfg: IntrospectConfig, out_dir: str | Path, generator: Generator | None = None) -> Path:
    """Generate, filter and mix introspection data; returns the SFT JSONL path.

    `generator` overrides `cfg.backend` (tests, or a caller that already holds the model).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    constitution = load_constitution(cfg.constitution)
    name = cfg.assistant_name or constitution.name
    r_items = reflection_plan(cfg.reflection, constitution, name)  # bad input fails before the model loads
    i_items = interaction_plan(cfg.interaction, constitution, name)
    generator = generator or make_generator(cfg.backend)
    tokenizer = tokenizer_for(cfg.tokenizer, generator)
    cfg.save(out / "config.yaml")
    records = {"reflection": reflect(cfg.reflection, r_items, generator, cfg.seed, cfg.chunk_size, out),
               "interaction": interact(cfg.interaction, i_items, generator, cfg.seed, cfg.chunk_size, out, tokenizer)}
    settings = FilterSettings(**cfg.filters.model_dump(), mix=cfg.mix)
    filter_and_mix(settings, introspection_rows(records, cfg.interaction), cfg.seed, out, tokenizer)
    return out / "sft.jsonl"


def _write_filter_outputs(out: Path, result: FilterResult) -> None:
    assert_no_placeholders([r.payload for r in result.kept])
    write_jsonl(out / "kept.jsonl", (r.payload for r in result.kept))
    write_jsonl(out / "rejected.jsonl", ({**r.payload, "reasons": [{"filter": f, "reason": why} for f, why in rs]}
                                         for r, rs in result.rejected))
    atomic_write_json(out / "filter_report.json", {"total": result.total, "kept": len(result.kept),
                                                   "filters": result.table})
    atomic_write_text(out / "filter_report.md", format_table(result) + "\n")
