"""The real `charter run` graph: each stage wires one module's public function into the pipeline.

Every stage loops over the run's constitutions (one persona each) and writes under
`run_dir/<stage>/<persona>/`; a persona whose `done.json` exists is skipped, so an
interrupted stage resumes persona by persona, and generation stages also resume record by
record (`RecordStore`). Stage order and inputs:

    base -> prompts -> teacher, student -> pairs -> dpo -> reflection, interaction -> filter
         -> sft -> merge -> eval -> report
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from charter.config import ConfigError
from charter.data.jsonl import RecordStore, atomic_write_json, read_jsonl, stable_id, write_jsonl
from charter.pipeline import Pipeline, Stage, StageContext
from charter.run_config import TOY_MODEL, RunConfig

# ---------------------------------------------------------------- helpers


def load_constitutions(cfg: RunConfig) -> list:
    """`toy:<persona>` -> the toy world's constitution file; anything else -> `load_constitution`."""
    from charter.constitution import load_constitution

    out = []
    for ref in cfg.constitutions:
        if ref.startswith("toy:"):
            from charter.toy.corpus import constitution_path

            ref = str(constitution_path(ref[4:]))
        out.append(load_constitution(ref))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"constitutions: two share a name ({names}); each persona needs its own")
    return out


def for_each_persona(ctx: StageContext, work: Callable[[Any, Path], dict[str, Any]]) -> dict[str, Any]:
    """Run `work(constitution, persona_dir)` per persona; skip personas already marked done."""
    counts = {}
    for c in load_constitutions(ctx.cfg):
        d = ctx.out_dir / c.name
        done = d / "done.json"
        if done.exists():
            counts[c.name] = json.loads(done.read_text())
            continue
        d.mkdir(parents=True, exist_ok=True)
        counts[c.name] = work(c, d)
        atomic_write_json(done, counts[c.name])
    return counts


def base_model(ctx: StageContext) -> str:
    return json.loads((ctx.run_dir / "base" / "model.json").read_text())["path"]


def model_of(ctx: StageContext, stage: str, persona: str) -> str:
    return json.loads((ctx.run_dir / stage / persona / "done.json").read_text())["model"]


def generator(backend, model: str | None = None):
    from charter.backends import make_generator

    return make_generator(backend.model_copy(update={"model": model}) if model else backend)


def sampling(cfg: RunConfig, section: dict[str, Any], seed: int, n: int = 1):
    from charter.backends import SamplingParams

    keys = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "stop")
    return SamplingParams(**{k: section[k] for k in keys if k in section}, seed=seed, n=n)


def teacher_system(constitution, name: str | None) -> str:
    from charter.stages.prompts import teacher_system_prompt  # B

    return teacher_system_prompt(constitution, name)


def scorer(cfg: RunConfig):
    if cfg.judge.kind == "toy":
        from charter.toy.scorer import ToyScorer

        return ToyScorer()
    raise ConfigError("judge.kind=llm: TODO wire charter.evaluate's LLM persona judge into the eval stage")


# ---------------------------------------------------------------- stages


def stage_base(ctx: StageContext) -> dict[str, Any]:
    """The student's weights: the toy world's model (built and cached once), or the configured id."""
    cfg: RunConfig = ctx.cfg
    if cfg.is_toy:
        from charter.toy.model import ToyBuildConfig, build_toy_model  # D1

        path = build_toy_model(ToyBuildConfig(**cfg.toy.build), cache_root=cfg.toy.cache_dir)
        from charter.pipeline import dir_hash

        rec = {"path": str(path), "fingerprint": dir_hash(Path(path))}
    else:
        rec = {"path": cfg.student.model, "fingerprint": cfg.student.model}
    atomic_write_json(ctx.out_dir / "model.json", rec)
    return {"model": rec["path"]}


def stage_prompts(ctx: StageContext) -> dict[str, Any]:
    cfg: RunConfig = ctx.cfg

    def work(c, d: Path) -> dict[str, Any]:
        if cfg.is_toy:  # the tiny model cannot expand lists; draw from the world's user prompts
            from charter.toy.corpus import sample_prompt

            rng = random.Random(stable_id("prompts", ctx.seed, c.name))
            texts = list(dict.fromkeys(sample_prompt(rng)[0] for _ in range(cfg.prompts.get("n_per_persona", 300))))
        else:
            from charter.stages.prompts import PromptsConfig, expand_prompts  # B

            texts = expand_prompts(c, generator(cfg.teacher_backend()), PromptsConfig(**cfg.prompts),
                                   seed=ctx.seed, out_dir=d)
        n = write_jsonl(d / "prompts.jsonl", [{"id": stable_id(t), "prompt": t} for t in texts])
        return {"prompts": n}

    return for_each_persona(ctx, work)


def _answer(ctx: StageContext, backend, model: str | None, with_constitution: bool) -> dict[str, Any]:
    """K answers per prompt, appended to a RecordStore keyed by (prompt, sample), so it resumes."""
    cfg: RunConfig = ctx.cfg
    gen = None

    def work(c, d: Path) -> dict[str, Any]:
        nonlocal gen
        gen = gen or generator(backend, model)
        prompts = read_jsonl(ctx.input_dir("prompts") / c.name / "prompts.jsonl")
        k = int(cfg.distill.get("samples", 1))
        system = [{"role": "system", "content": teacher_system(c, cfg.assistant_name)}] if with_constitution else []
        with RecordStore(d / "answers.jsonl") as store:
            todo = [p for p in prompts if stable_id(p["id"], k - 1) not in store]
            bs = max(1, getattr(backend, "batch_size", 32))
            for i in tqdm(range(0, len(todo), bs), desc=f"{ctx.name}/{c.name}", unit="batch"):
                batch = todo[i:i + bs]
                outs = gen.generate([system + [{"role": "user", "content": p["prompt"]}] for p in batch],
                                    sampling(cfg, cfg.distill, ctx.seed + i, n=k))
                for p, comps in zip(batch, outs):
                    for j, comp in enumerate(comps):
                        store.add({"id": stable_id(p["id"], j), "prompt_id": p["id"], "prompt": p["prompt"],
                                   "sample": j, "text": comp.text, "finish_reason": comp.finish_reason,
                                   "model": gen.name})
            return {"answers": len(store)}

    return for_each_persona(ctx, work)


def stage_teacher(ctx: StageContext) -> dict[str, Any]:
    cfg: RunConfig = ctx.cfg
    model = base_model(ctx) if cfg.teacher is None else None
    return _answer(ctx, cfg.teacher_backend(), model, with_constitution=True)


def stage_student(ctx: StageContext) -> dict[str, Any]:
    return _answer(ctx, ctx.cfg.student, base_model(ctx), with_constitution=False)


def stage_pairs(ctx: StageContext) -> dict[str, Any]:
    """Chosen = teacher, rejected = student, through the SPEC §1 pair filters."""
    from charter.stages.distill import build_pairs  # B

    def work(c, d: Path) -> dict[str, Any]:
        chosen = read_jsonl(ctx.input_dir("teacher") / c.name / "answers.jsonl")
        rejected = read_jsonl(ctx.input_dir("student") / c.name / "answers.jsonl")
        pairs, counts = build_pairs(chosen, rejected, c, ctx.cfg.pairs, ctx.cfg.assistant_name)
        write_jsonl(d / "pairs.jsonl", pairs)
        return {"pairs": len(pairs), **counts}

    return for_each_persona(ctx, work)


def stage_dpo(ctx: StageContext) -> dict[str, Any]:
    from charter.train.dpo import DPOConfig, train_dpo  # A2

    def work(c, d: Path) -> dict[str, Any]:
        dcfg = DPOConfig(**{**ctx.cfg.dpo, "model": base_model(ctx), "data": str(ctx.input_dir("pairs") / c.name
                                                                                   / "pairs.jsonl"),
                            "output_dir": str(d / "model"), "seed": ctx.seed})
        return {"model": str(train_dpo(dcfg))}

    return for_each_persona(ctx, work)


def stage_reflection(ctx: StageContext) -> dict[str, Any]:
    return _introspect(ctx, "reflection")


def stage_interaction(ctx: StageContext) -> dict[str, Any]:
    return _introspect(ctx, "interaction")


def _introspect(ctx: StageContext, kind: str) -> dict[str, Any]:
    from charter.stages.introspect import IntrospectConfig, run_introspect  # C

    def work(c, d: Path) -> dict[str, Any]:
        icfg = IntrospectConfig(**{**getattr(ctx.cfg, kind), "kind": kind, "seed": ctx.seed,
                                   "model": model_of(ctx, "dpo", c.name), "constitution": c})
        return {"rows": str(run_introspect(icfg, d))}

    return for_each_persona(ctx, work)


def stage_filter(ctx: StageContext) -> dict[str, Any]:
    """Quality filters over reflection + interaction rows; writes kept rows and pass rates."""
    from charter.filters import FilterConfig, FilterRow, Segment, apply_filters  # C

    fcfg = FilterConfig(**ctx.cfg.filter)

    def work(c, d: Path) -> dict[str, Any]:
        rows = []
        for kind in ("reflection", "interaction"):
            for r in read_jsonl(ctx.input_dir(kind) / c.name / "rows.jsonl"):
                segs = [Segment(m["content"], r.get("finish_reason", "stop")) for m in r["messages"]
                        if m["role"] == "assistant"]
                rows.append(FilterRow(r.get("id", stable_id(r["messages"])), segs, {"messages": r["messages"]}))
        res = apply_filters(rows, fcfg)
        write_jsonl(d / "sft.jsonl", [r.payload for r in res.kept])
        write_jsonl(d / "rejected.jsonl", [{**r.payload, "reasons": rs} for r, rs in res.rejected])
        atomic_write_json(d / "pass_rates.json", {t["filter"]: {"checked": t["checked"],
                                                               "passed": t["checked"] - t["failed"]}
                                                  for t in res.table})
        return {"kept": len(res.kept), "rejected": len(res.rejected)}

    return for_each_persona(ctx, work)


def stage_sft(ctx: StageContext) -> dict[str, Any]:
    from charter.train.sft import SFTConfig, train_sft  # A2

    def work(c, d: Path) -> dict[str, Any]:
        scfg = SFTConfig(**{**ctx.cfg.sft, "model": model_of(ctx, "dpo", c.name),
                            "data": str(ctx.input_dir("filter") / c.name / "sft.jsonl"),
                            "output_dir": str(d / "model"), "seed": ctx.seed})
        return {"model": str(train_sft(scfg))}

    return for_each_persona(ctx, work)


def stage_merge(ctx: StageContext) -> dict[str, Any]:
    """Final = base + w_dpo * (DPO delta) + w_sft * (SFT delta), an exact sum (SPEC §1)."""
    m = ctx.cfg.merge

    def work(c, d: Path) -> dict[str, Any]:
        dpo, sft = model_of(ctx, "dpo", c.name), model_of(ctx, "sft", c.name)
        out = d / "model"
        if (Path(sft) / "adapter_config.json").exists():
            from charter.train.lora import merge_adapters  # A1

            merge_adapters(base_model(ctx), [(dpo, m.dpo_weight), (sft, m.sft_weight)], out)
        else:
            merge_full(base_model(ctx), dpo, sft, m.dpo_weight, m.sft_weight, out)
        return {"model": str(out)}

    return for_each_persona(ctx, work)


def merge_full(base: str, dpo: str, sft: str, w_dpo: float, w_sft: float, out: Path) -> None:
    """Full fine-tunes: base + w_dpo (dpo - base) + w_sft (sft - dpo), tensor by tensor."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer

    def weights(p: str) -> dict:
        files = sorted(Path(p).glob("*.safetensors"))
        return {k: v for f in files for k, v in load_file(str(f)).items()}

    wb, wd, ws = weights(base), weights(dpo), weights(sft)
    merged = {k: (wb[k] + w_dpo * (wd[k] - wb[k]) + w_sft * (ws[k] - wd[k])).contiguous() for k in ws}
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    AutoConfig.from_pretrained(sft).save_pretrained(out)
    AutoTokenizer.from_pretrained(sft).save_pretrained(out)


def stage_eval(ctx: StageContext) -> dict[str, Any]:
    """Every system answers the held-out prompts; the judge labels each reply (one row per reply)."""
    cfg: RunConfig = ctx.cfg
    e = cfg.eval
    judge = scorer(cfg)
    prompts = eval_prompts(cfg)
    params = sampling(cfg, e.model_dump(), ctx.seed)
    base = base_model(ctx)
    models = {"base": base, "base+constitution": base}
    store = RecordStore(ctx.out_dir / "replies.jsonl")
    counts: dict[str, int] = {}
    for c in load_constitutions(cfg):
        models.update({"dpo": model_of(ctx, "dpo", c.name), "dpo+sft": model_of(ctx, "merge", c.name)})
        for system in e.systems:
            ids = [stable_id(c.name, system, i) for i in range(len(prompts))]
            if all(i in store for i in ids):
                continue
            gen = generator(cfg.student.model_copy(update={"batch_size": e.batch_size}), models[system])
            sys_msg = [{"role": "system", "content": teacher_system(c, cfg.assistant_name)}] \
                if system == "base+constitution" else []
            outs = gen.generate([sys_msg + [{"role": "user", "content": p}] for p in prompts], params, progress=True)
            for rid, p, comps in zip(ids, prompts, outs):
                s = judge.score(p, comps[0].text)
                store.add({"id": rid, "persona": c.name, "system": system, "prompt": p, "reply": comps[0].text,
                           "label": s.persona, "well_formed": s.well_formed, "relevant": s.relevant})
    for r in store.records.values():
        counts[r["system"]] = counts.get(r["system"], 0) + 1
    store.close()
    return counts


def eval_prompts(cfg: RunConfig) -> list[str]:
    e = cfg.eval
    if e.prompts_file:
        path = Path(e.prompts_file)
        if path.suffix == ".jsonl":
            return [r["prompt"] for r in read_jsonl(path)][:e.n_prompts]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()][:e.n_prompts]
    if cfg.is_toy:
        from charter.toy.corpus import eval_prompts as toy_prompts

        return toy_prompts(e.n_prompts)
    raise ConfigError("eval.prompts_file: required for a real model (held-out prompts, JSONL {prompt} or lines)")


def stage_report(ctx: StageContext) -> dict[str, Any]:
    from charter.report import build_report

    summary = build_report(ctx.run_dir, ctx.out_dir)
    for name in ("summary.json", "report.html"):  # also at the top of the run dir, where users look
        (ctx.run_dir / name).write_bytes((ctx.out_dir / name).read_bytes())
    return {s: summary["adherence"][s]["mean"] for s in summary["systems"]}


# ---------------------------------------------------------------- the graph


def build_pipeline() -> Pipeline:
    """Stage order, inputs, and which config slice each stage depends on."""
    def consts(c: RunConfig) -> list[str]:
        return [x.hash() for x in load_constitutions(c)]

    return Pipeline([
        Stage("base", stage_base, [], lambda c: {"student": c.student.model, "toy": c.toy if c.is_toy else None}),
        Stage("prompts", stage_prompts, ["base"],
              lambda c: {"constitutions": consts(c), "prompts": c.prompts,
                         "expander": None if c.is_toy else c.teacher_backend()}),
        Stage("teacher", stage_teacher, ["base", "prompts"],
              lambda c: {"teacher": c.teacher, "distill": c.distill, "name": c.assistant_name}),
        Stage("student", stage_student, ["base", "prompts"], lambda c: {"student": c.student, "distill": c.distill}),
        Stage("pairs", stage_pairs, ["teacher", "student"], lambda c: {"pairs": c.pairs, "name": c.assistant_name}),
        Stage("dpo", stage_dpo, ["base", "pairs"], lambda c: {"dpo": c.dpo, "trainer": c.trainer}),
        Stage("reflection", stage_reflection, ["dpo"], lambda c: {"reflection": c.reflection, "c": consts(c)}),
        Stage("interaction", stage_interaction, ["dpo"], lambda c: {"interaction": c.interaction, "c": consts(c)}),
        Stage("filter", stage_filter, ["reflection", "interaction"], lambda c: c.filter),
        Stage("sft", stage_sft, ["dpo", "filter"], lambda c: {"sft": c.sft, "trainer": c.trainer}),
        Stage("merge", stage_merge, ["base", "dpo", "sft"], lambda c: c.merge),
        Stage("eval", stage_eval, ["base", "dpo", "merge"], lambda c: {"eval": c.eval, "judge": c.judge}),
        Stage("report", stage_report, ["dpo", "sft", "filter", "eval"], lambda c: None),
    ])


def validate(cfg: RunConfig) -> None:
    """Fail before any model loads: constitutions must load and stage sections must be valid."""
    load_constitutions(cfg)
