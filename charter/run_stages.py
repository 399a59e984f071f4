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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from charter.config import ConfigError
from charter.data.jsonl import RecordStore, atomic_write_json, read_jsonl, stable_id, write_jsonl
from charter.pipeline import Pipeline, Stage, StageContext
from charter.run_config import RunConfig

# ---------------------------------------------------------------- helpers


@dataclass
class Persona:
    key: str  # folder name, and the label the judge gives replies in this character (the file's stem)
    ref: str  # the path or library name, as the stage modules take it
    constitution: Any


def personas(cfg: RunConfig) -> list[Persona]:
    """`toy:<persona>` -> the toy world's constitution file; anything else as given."""
    from charter.constitution import load_constitution

    out = []
    for ref in cfg.constitutions:
        if ref.startswith("toy:"):
            from charter.toy.corpus import constitution_path

            ref = str(constitution_path(ref[4:]))
        out.append(Persona(Path(ref).stem, ref, load_constitution(ref)))
    keys = [p.key for p in out]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"constitutions: two share a file name ({keys}); each persona needs its own")
    return out


def for_each_persona(ctx: StageContext, work: Callable[[Persona, Path], dict[str, Any]]) -> dict[str, Any]:
    """Run `work(persona, persona_dir)` per persona; skip personas already marked done."""
    counts = {}
    for per in personas(ctx.cfg):
        d = ctx.out_dir / per.key
        done = d / "done.json"
        if done.exists():
            counts[per.key] = json.loads(done.read_text())
            continue
        d.mkdir(parents=True, exist_ok=True)
        counts[per.key] = work(per, d)
        atomic_write_json(done, counts[per.key])
    return counts


def base_model(ctx: StageContext) -> str:
    return json.loads((ctx.run_dir / "base" / "model.json").read_text())["path"]


def model_of(ctx: StageContext, stage: str, persona: str) -> str:
    return json.loads((ctx.run_dir / stage / persona / "done.json").read_text())["model"]


def generator(backend, model: str | None = None):
    from charter.backends import make_generator

    return make_generator(backend.model_copy(update={"model": model}) if model else backend)


def sampling(section: dict[str, Any], seed: int):
    from charter.backends import SamplingParams

    keys = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "stop")
    return SamplingParams(**{k: section[k] for k in keys if k in section}, seed=seed)


def distill_config(cfg: RunConfig, constitution: str = "-"):
    """The distillation stage's `DistillConfig` from the run's `prompts`, `distill` and `pairs` sections (its field names)."""
    from charter.stages.distill import DistillConfig

    return DistillConfig(constitution=constitution, teacher=cfg.teacher_backend(), student=cfg.student,
                         student_name=cfg.assistant_name, **cfg.prompts, **cfg.distill, **cfg.pairs)


def name_of(cfg: RunConfig, constitution) -> str:
    return cfg.assistant_name or constitution.name


def teacher_system(cfg: RunConfig, constitution) -> str:
    from charter.constitution_prompt import teacher_system_prompt

    return teacher_system_prompt(constitution, name_of(cfg, constitution))


def scorer(ctx: StageContext):
    """The toy world's deterministic scorer, a classifier trained on the run's own answers, or the
    LLM judge asked which persona (or neutral) replied."""
    cfg: RunConfig = ctx.cfg
    if cfg.judge.kind == "toy":
        from charter.toy.scorer import ToyScorer

        return ToyScorer()
    if cfg.judge.kind == "classifier":
        return answer_classifier(ctx)
    from charter.backends import SamplingParams
    from charter.evaluate.judges import Judge, JudgePersonaScorer

    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.judge.max_new_tokens, seed=0)
    judge = Judge(generator(cfg.judge.backend or cfg.teacher_backend()), cache=ctx.out_dir / "judge_cache.jsonl",
                  params=params)
    return JudgePersonaScorer(judge, {p.key: " ".join(t.text for t in p.constitution.traits) for p in personas(cfg)})


def answer_classifier(ctx: StageContext):
    """Train the judge on teacher answers (labelled with the persona) against student answers
    (neutral) to the training prompts, split by prompt, and report its held-out accuracy first:
    the eval prompts are never among them, so the figures it gives are on unseen prompts."""
    from charter.evaluate.classifier import labelled_from_answers, train_and_evaluate

    j = ctx.cfg.judge
    rows = [row for per in personas(ctx.cfg) for row in labelled_from_answers(
        *(ctx.input_dir(role) / per.key / "answers.jsonl" for role in ("teacher", "student")), per.key)]
    clf, m = train_and_evaluate(rows, ctx.out_dir / "classifier", test_frac=j.test_frac, seed=ctx.seed,
                                encoder=j.encoder)
    print(f"classifier ({clf.name}): held-out accuracy {m['accuracy']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}], "
          f"macro-F1 {m['macro_f1']:.3f}, on {m['n']} answers to unseen training prompts ({m['train_n']} trained on)",
          file=sys.stderr)
    return clf


def require_kept(where: str, kept: int, total: int, dropped: dict[str, int], hint: str) -> None:
    """Stop the run when filters left nothing: training on no data would hide the cause."""
    if kept:
        return
    named = ", ".join(f"{name}: {n}" for name, n in dropped.items() if n) or "no candidates"
    raise ConfigError(f"{where}: the filters dropped all {total} candidates ({named}); {hint}")


def score_all(judge, pairs: list[tuple[str, str]]) -> list:
    """Batch scoring where the scorer supports it (an LLM judge), else one by one."""
    many = getattr(judge, "score_many", None)
    return many(pairs, progress=True) if many else [judge.score(p, r) for p, r in pairs]


# ---------------------------------------------------------------- stages


def stage_base(ctx: StageContext) -> dict[str, Any]:
    """The student's weights: the toy world's model (built and cached once), or the configured id."""
    cfg: RunConfig = ctx.cfg
    if cfg.is_toy:
        from charter.pipeline import dir_hash
        from charter.toy.model import ToyBuildConfig, build_toy_model, toy_model_dir

        bcfg = ToyBuildConfig(**cfg.toy.build)
        path = build_toy_model(bcfg, toy_model_dir(bcfg, cfg.toy.cache_dir))
        rec = {"path": str(path), "fingerprint": dir_hash(Path(path))}
    else:
        rec = {"path": cfg.student.model, "fingerprint": cfg.student.model}
    atomic_write_json(ctx.out_dir / "model.json", rec)
    return {"model": rec["path"]}


def stage_prompts(ctx: StageContext) -> dict[str, Any]:
    cfg: RunConfig = ctx.cfg

    def work(per: Persona, d: Path) -> dict[str, Any]:
        if cfg.is_toy:  # the tiny model cannot expand lists; draw from the world's user prompts
            from charter.toy.corpus import sample_prompt

            rng = random.Random(stable_id("prompts", ctx.seed, per.key))
            texts = dict.fromkeys(sample_prompt(rng, "train")[0] for _ in range(int(cfg.toy.prompts_per_persona)))
            prompts = [{"id": stable_id(t), "prompt": t, "source": "toy", "trait_index": None} for t in texts]
            counts = {"toy": len(prompts)}
        else:
            from charter.stages.prompts import dedupe, expand_prompts, general_prompts

            dc = distill_config(cfg)
            with RecordStore(d / "expansion.jsonl") as store:
                prompts, counts = expand_prompts(per.constitution, generator(dc.expander or dc.teacher), store, dc.prompts_per_trait,
                                                 dc.expansion_samples, dc.expansion_rounds, dc.expansion_sampling,
                                                 dc.chunk_size, progress=True)
            if dc.general_prompts:
                prompts += general_prompts(dc.general_prompts, dc.general_limit)
            prompts = dedupe(prompts)
        write_jsonl(d / "prompts.jsonl", prompts)
        return {"prompts": len(prompts), **dict(counts)}

    return for_each_persona(ctx, work)


def _answer(ctx: StageContext, role: str, backend, model: str | None) -> dict[str, Any]:
    """K samples per prompt through the resumable `stages.records.generate_into` (one record per prompt, sample, role)."""
    from charter.backends import GenerationRequest
    from charter.stages.records import Job, generate_into
    from charter.constitution_prompt import thinking_prefill

    cfg: RunConfig = ctx.cfg
    dc = distill_config(cfg)
    gen = None

    def work(per: Persona, d: Path) -> dict[str, Any]:
        nonlocal gen
        gen = gen or generator(backend, model)
        system = [{"role": "system", "content": teacher_system(cfg, per.constitution)}] if role == "teacher" else []
        prefill = thinking_prefill(per.constitution, name_of(cfg, per.constitution), dc.think_start) if role == "teacher" and dc.think else ""
        jobs = [Job(stable_id(p["prompt"], role),
                    GenerationRequest(messages=system + [{"role": "user", "content": p["prompt"]}], prefill=prefill),
                    {"role": role, "prompt_id": p["id"], "prompt": p["prompt"], "model": gen.name})
                for p in read_jsonl(ctx.input_dir("prompts") / per.key / "prompts.jsonl")]
        params = dc.sampling.model_copy(update={"n": dc.samples, "seed": ctx.seed})
        with RecordStore(d / "answers.jsonl") as store:
            generate_into(store, gen, jobs, params, dc.chunk_size, f"{role}/{per.key}", progress=True)
            return {"answers": len(store), "prefill": prefill}

    return for_each_persona(ctx, work)


def stage_teacher(ctx: StageContext) -> dict[str, Any]:
    cfg: RunConfig = ctx.cfg
    return _answer(ctx, "teacher", cfg.teacher_backend(), base_model(ctx) if cfg.teacher is None else None)


def stage_student(ctx: StageContext) -> dict[str, Any]:
    return _answer(ctx, "student", ctx.cfg.student, base_model(ctx))


def stage_pairs(ctx: StageContext) -> dict[str, Any]:
    """Chosen = teacher, rejected = student, through `stages.distill.build_pairs` (SPEC §1 filters, provenance)."""
    from charter.stages.distill import PairMaker, build_pairs

    cfg: RunConfig = ctx.cfg
    dc = distill_config(cfg)
    tok = None
    if dc.max_pair_tokens is not None:
        from charter.models import CONFIG_FILES, load_tokenizer, local_folder

        template = cfg.student.chat_template if cfg.student.chat is not False else None
        tok = load_tokenizer(local_folder(dc.tokenizer or base_model(ctx), CONFIG_FILES), template)
    sampling = dc.sampling.model_copy(update={"n": dc.samples, "seed": ctx.seed}).model_dump()  # as `_answer` ran

    def work(per: Persona, d: Path) -> dict[str, Any]:
        teacher_name, student = name_of(cfg, per.constitution), dc.student_name or name_of(cfg, per.constitution)
        prefill = json.loads((ctx.input_dir("teacher") / per.key / "done.json").read_text())["prefill"]
        side = {r: {(a["prompt_id"], a["sample"]): a for a in read_jsonl(ctx.input_dir(r) / per.key / "answers.jsonl")}
                for r in ("teacher", "student")}
        prompts = {p["id"]: p for p in read_jsonl(ctx.input_dir("prompts") / per.key / "prompts.jsonl")}
        models = {r: next(iter(side[r].values()), {}).get("model") for r in side}
        provenance = {"teacher": models["teacher"], "student": models["student"], "constitution": per.key,
                      "constitution_hash": per.constitution.hash(), "sampling": sampling, "think": dc.think,
                      "teacher_name": teacher_name, "student_name": student}
        make = PairMaker(teacher_name, student, dc.self_names, prefill, dc.think_end, tok, dc.max_pair_tokens)
        pairs, counts = build_pairs(make, prompts, dict(sorted(side["teacher"].items())), side["student"], provenance)
        require_kept(f"pairs/{per.key}", len(pairs), sum(counts.values()), dict(counts),
                     f"DPO would train on nothing; see {ctx.input_dir('teacher') / per.key / 'answers.jsonl'} "
                     "(a cut-off answer fails `length`: raise distill.sampling.max_new_tokens)")
        write_jsonl(d / "pairs.jsonl", pairs)
        return {"pairs": len(pairs), **dict(counts)}

    return for_each_persona(ctx, work)


def train(ctx: StageContext, kind: str, section: dict[str, Any], model: str, data: Path, out: Path) -> str:
    """A2's trainer in this process, or under `accelerate launch` (trainer.launcher) for multi-GPU."""
    import subprocess

    if kind == "dpo":
        from charter.train.dpo import DPOConfig as Cls, train_dpo as fn
    else:
        from charter.train.sft import SFTConfig as Cls, train_sft as fn
    student = ctx.cfg.student
    tcfg = Cls(**{"chat": student.chat, "chat_template": student.chat_template, **section, "model": model,
                  "data": str(data), "output_dir": str(out), "seed": ctx.seed})
    t = ctx.cfg.trainer
    if t.launcher == "local":
        return str(fn(tcfg))
    tcfg.save(out.parent / f"{kind}.yaml")
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *t.accelerate_args, "-m", "charter.cli",
                    "train", kind, str(out.parent / f"{kind}.yaml")], check=True)
    return str(out)


def stage_dpo(ctx: StageContext) -> dict[str, Any]:
    def work(per: Persona, d: Path) -> dict[str, Any]:
        pairs = ctx.input_dir("pairs") / per.key / "pairs.jsonl"
        return {"model": train(ctx, "dpo", ctx.cfg.dpo, base_model(ctx), pairs, d / "model")}

    return for_each_persona(ctx, work)


def introspect_config(cfg: RunConfig, ref: str, model: str):
    """The introspection stage's `IntrospectConfig` from the run's `reflection`, `interaction` and `filter` sections."""
    from charter.stages.introspect import IntrospectConfig

    f = dict(cfg.filter)
    return IntrospectConfig(constitution=ref, assistant_name=cfg.assistant_name, seed=cfg.seed,
                            backend=cfg.student.model_copy(update={"model": model}),
                            reflection=cfg.reflection, interaction=cfg.interaction,
                            mix=f.pop("mix", {}), filters=f)


def stage_reflection(ctx: StageContext) -> dict[str, Any]:
    return _introspect(ctx, "reflection")


def stage_interaction(ctx: StageContext) -> dict[str, Any]:
    return _introspect(ctx, "interaction")


def _introspect(ctx: StageContext, kind: str) -> dict[str, Any]:
    """The resumable introspection generation for one kind (the other disabled); filtering is the `filter` stage."""
    from charter.stages.introspect import run_introspect

    other = "interaction" if kind == "reflection" else "reflection"

    def work(per: Persona, d: Path) -> dict[str, Any]:
        icfg = introspect_config(ctx.cfg, per.ref, model_of(ctx, "dpo", per.key))
        icfg = icfg.model_copy(update={other: getattr(icfg, other).model_copy(update={"enabled": False})})
        run_introspect(icfg, d, generator(icfg.backend))
        return {"records": len(read_jsonl(d / f"{kind}.jsonl"))}

    return for_each_persona(ctx, work)


def stage_filter(ctx: StageContext) -> dict[str, Any]:
    """The quality filters over reflection + interaction records, then the mix into SFT rows."""
    from charter.filters import apply_filters
    from charter.stages.introspect import (assert_no_placeholders, interaction_filter_rows, mix_rows,
                                           reflection_filter_rows)

    cfg: RunConfig = ctx.cfg
    icfg = introspect_config(cfg, "-", "-")
    ic = icfg.interaction

    def work(per: Persona, d: Path) -> dict[str, Any]:
        def records(kind: str) -> list[dict]:  # sorted: resumed stores append in another order
            return sorted(read_jsonl(ctx.input_dir(kind) / per.key / f"{kind}.jsonl"), key=lambda r: r["id"])

        rows = reflection_filter_rows(records("reflection")) + \
            interaction_filter_rows(records("interaction"), ic.views, ic.system_prompt == "keep")
        res = apply_filters(rows, icfg.filters)
        kept: dict[str, list[dict]] = {"reflection": [], "interaction": []}
        for r in res.kept:
            kept[r.payload["kind"]].append(r.payload)
        sft = mix_rows(kept, icfg.mix, ctx.seed)
        assert_no_placeholders(sft)
        write_jsonl(d / "sft.jsonl", ({"messages": r["messages"]} for r in sft))
        write_jsonl(d / "rejected.jsonl", ({**r.payload, "reasons": rs} for r, rs in res.rejected))
        atomic_write_json(d / "pass_rates.json", {t["filter"]: {"checked": t["checked"],
                                                               "passed": t["checked"] - t["failed"]}
                                                  for t in res.table})
        require_kept(f"filter/{per.key}", len(res.kept), res.total, {t["filter"]: t["first_failed"] for t in res.table},
                     f"SFT would train on nothing; see {d / 'rejected.jsonl'} (a cut-off reply fails `unfinished`: "
                     "raise reflection/interaction sampling.max_new_tokens)")
        return {"candidates": res.total, "kept": len(res.kept), "sft_rows": len(sft)}

    return for_each_persona(ctx, work)


def stage_sft(ctx: StageContext) -> dict[str, Any]:
    def work(per: Persona, d: Path) -> dict[str, Any]:
        rows = ctx.input_dir("filter") / per.key / "sft.jsonl"
        return {"model": train(ctx, "sft", ctx.cfg.sft, model_of(ctx, "dpo", per.key), rows, d / "model")}

    return for_each_persona(ctx, work)


def stage_merge(ctx: StageContext) -> dict[str, Any]:
    """Final = base + w_dpo * (DPO delta) + w_sft * (SFT delta), an exact sum (SPEC §1)."""
    m = ctx.cfg.merge

    def work(per: Persona, d: Path) -> dict[str, Any]:
        from charter.train.stage_merge import merge_stages

        dpo, sft = model_of(ctx, "dpo", per.key), model_of(ctx, "sft", per.key)
        out = merge_stages(base_model(ctx), [(dpo, m.dpo_weight), (sft, m.sft_weight)], d / "model")
        return {"model": str(out)}

    return for_each_persona(ctx, work)


def stage_eval(ctx: StageContext) -> dict[str, Any]:
    """Every system answers the held-out prompts; the judge labels each reply (one row per reply)."""
    cfg: RunConfig = ctx.cfg
    e = cfg.eval
    judge = scorer(ctx)
    prompts = eval_prompts(cfg)
    check_heldout(ctx, prompts)
    params = sampling(e.model_dump(), ctx.seed)
    backend = cfg.student.model_copy(update={"batch_size": e.batch_size})
    memo: dict[tuple[str, str], list[str]] = {}
    loaded: dict[str, Any] = {}  # the latest model only: "base" and "base+constitution" share one load

    def generate(model: str, chats: list[list[dict]]) -> list[str]:
        if model not in loaded:
            loaded.clear()
            loaded[model] = generator(backend, model)
        return [comps[0].text for comps in loaded[model].generate(chats, params, progress=True)]

    with RecordStore(ctx.out_dir / "replies.jsonl") as store:
        for per in personas(cfg):
            models = {"base": base_model(ctx), "base+constitution": base_model(ctx),
                      "dpo": model_of(ctx, "dpo", per.key), "dpo+sft": model_of(ctx, "merge", per.key)}
            for system in e.systems:
                ids = [stable_id(per.key, system, i) for i in range(len(prompts))]
                if all(i in store for i in ids):
                    continue
                sys_msg = [{"role": "system", "content": teacher_system(cfg, per.constitution)}] \
                    if system == "base+constitution" else []
                key = (models[system], json.dumps(sys_msg))
                if key not in memo:  # "base" is the same model and prompt for every persona: generate once
                    memo[key] = generate(models[system], [sys_msg + [{"role": "user", "content": p}] for p in prompts])
                replies = memo[key]
                generations = [stable_id(*key, i) for i in range(len(prompts))]  # shared replies share one id
                for rid, gen, p, reply, sc in zip(ids, generations, prompts, replies,
                                                  score_all(judge, list(zip(prompts, replies)))):
                    store.add({"id": rid, "generation": gen, "persona": per.key, "system": system, "prompt": p,
                               "reply": reply, "label": sc.persona, "well_formed": sc.well_formed, "relevant": sc.relevant})
        counts: dict[str, int] = {}
        for r in store.records.values():
            counts[r["system"]] = counts.get(r["system"], 0) + 1
    return counts


def check_heldout(ctx: StageContext, prompts: list[str]) -> None:
    """Record (in eval/heldout.json, then summary.json) how many eval prompts were training
    prompts of any persona, and warn when there are some: such figures are not held out."""
    from charter.stages.prompts import prompt_overlap

    train = [r["prompt"] for per in personas(ctx.cfg)
             for r in read_jsonl(ctx.input_dir("prompts") / per.key / "prompts.jsonl")]
    report = prompt_overlap(prompts, train)
    atomic_write_json(ctx.out_dir / "heldout.json", report)
    if report["overlap"]:
        print(f"warning: {report['overlap']} of {report['eval_distinct']} distinct eval prompts are also training "
              f"prompts (e.g. {report['overlap_examples'][0]!r}); adherence on them is not held out", file=sys.stderr)


def eval_prompts(cfg: RunConfig) -> list[str]:
    """Held-out prompts through `evaluate.runner.load_prompts`: a file, or the toy world's own (independent seed)."""
    from charter.evaluate.runner import load_prompts
    from charter.toy.world import TOY_WORLD

    spec = cfg.eval.prompts_file or ("toy" if cfg.is_toy else None)
    if spec is None:
        raise ConfigError("eval.prompts_file: required for a real model (held-out prompts: JSONL {prompt} or lines)")
    return load_prompts(spec, cfg.eval.n_prompts, cfg.seed, TOY_WORLD)


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
        return [p.constitution.hash() for p in personas(c)]

    return Pipeline([
        Stage("base", stage_base, [],
              lambda c: {"student": c.student.model, "toy": c.toy.model_dump(exclude={"prompts_per_persona"})
                         if c.is_toy else None}),
        Stage("prompts", stage_prompts, ["base"],
              lambda c: {"constitutions": consts(c), "prompts": c.prompts,
                         "toy": c.toy.prompts_per_persona if c.is_toy else None,
                         "expander": None if c.is_toy else c.teacher_backend()}),
        Stage("teacher", stage_teacher, ["base", "prompts"],
              lambda c: {"teacher": c.teacher_backend(), "distill": c.distill, "name": c.assistant_name}),
        Stage("student", stage_student, ["base", "prompts"], lambda c: {"student": c.student, "distill": c.distill}),
        Stage("pairs", stage_pairs, ["base", "prompts", "teacher", "student"],
              lambda c: {"pairs": c.pairs, "distill": c.distill, "name": c.assistant_name}),
        Stage("dpo", stage_dpo, ["base", "pairs"], lambda c: {"dpo": c.dpo, "trainer": c.trainer}),
        Stage("reflection", stage_reflection, ["dpo"], lambda c: {"reflection": c.reflection, "c": consts(c)}),
        Stage("interaction", stage_interaction, ["dpo"], lambda c: {"interaction": c.interaction, "c": consts(c)}),
        Stage("filter", stage_filter, ["reflection", "interaction"], lambda c: c.filter),
        Stage("sft", stage_sft, ["dpo", "filter"], lambda c: {"sft": c.sft, "trainer": c.trainer}),
        Stage("merge", stage_merge, ["base", "dpo", "sft"], lambda c: c.merge),
        Stage("eval", stage_eval, ["base", "prompts", "teacher", "student", "dpo", "merge"],
              lambda c: {"eval": c.eval, "judge": c.judge, "student": c.student, "c": consts(c),
                         "name": c.assistant_name}),
        Stage("report", stage_report, ["dpo", "sft", "filter", "eval"], lambda c: None),
    ])


def validate(cfg: RunConfig, dry_run: bool = False) -> None:
    """Fail before any model loads: constitutions must load, every stage section must validate
    against its owner's config class (so a typo in `dpo.bta` fails now, not after generation), and
    every model the run loads must resolve, a Hub id from the cache or the Hub (config and
    tokenizer only)."""
    from pydantic import ValidationError

    from charter.models import check_model

    if not cfg.is_toy and cfg.eval.prompts_file is None:
        msg = "eval.prompts_file: required for a real model (held-out prompts: JSONL {prompt} or lines)"
        if not dry_run:
            raise ConfigError(msg)
        print(f"warning: {msg}", file=sys.stderr)
    if cfg.eval.prompts_file is not None:
        eval_prompts(cfg)  # a bad held-out prompts file fails now, not after training

    refs = [p.ref for p in personas(cfg)]
    checks: dict[str, Callable[[], Any]] = {
        "prompts/distill/pairs": lambda: distill_config(cfg, refs[0]),
        "reflection/interaction/filter": lambda: introspect_config(cfg, refs[0], "-"),
        "dpo": lambda: _train_config("dpo", cfg.dpo),
        "sft": lambda: _train_config("sft", cfg.sft),
    }
    if cfg.is_toy:
        checks["toy.build"] = lambda: __import__("charter.toy.model", fromlist=["x"]).ToyBuildConfig(**cfg.toy.build)
    for where, check in checks.items():
        try:
            check()
        except ValidationError as e:
            lines = [f"{where}: " + ".".join(map(str, err["loc"])) + f": {err['msg']} (got {err.get('input')!r})"
                     for err in e.errors()]
            raise ConfigError("invalid run config\n  " + "\n  ".join(lines)) from None
        except TypeError as e:
            raise ConfigError(f"invalid run config: {where}: {e}") from None
        except ModuleNotFoundError as e:  # a stage module not installed/landed: its stage will say so
            print(f"warning: cannot check {where}: {e}", file=sys.stderr)
    for name in cfg.local_models():
        check_model(name)


def _train_config(kind: str, section: dict[str, Any]):
    if kind == "dpo":
        from charter.train.dpo import DPOConfig as Cls
    else:
        from charter.train.sft import SFTConfig as Cls
    return Cls(**{**section, "model": "-", "data": "-", "output_dir": "-"})
