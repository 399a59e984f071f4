"""The `charter run` stage list: each stage builds its typed settings and calls step functions.

A stage's settings object is everything it reads (its config section, the personas, the
backends), so its cache key (a hash of that object) cannot drift from what it does. Every
stage loops over the run's personas and writes under `run_dir/<stage>/<persona>/`; a persona
whose `done.json` exists is skipped, so an interrupted stage resumes persona by persona, and
generation steps also resume record by record. Where each file lives: `charter.run.layout`.

    base -> prompts -> teacher, student -> pairs -> dpo -> reflection, interaction -> filter
         -> sft -> merge -> eval -> report

With `method: sdft|grpo|ppo` the `dpo` stage trains from the prompts (on-policy) and the teacher,
student and pairs stages are left out; introspection, SFT and merge follow it as with DPO. PPO
whose reward model the run trains keeps them, and an `rm` stage trains that model on the pairs:

    ... -> pairs -> rm -> dpo (PPO against it) -> ...
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Literal


from charter.backends import BackendConfig, make_generator
from charter.cards import write_run_cards
from charter.config import Config, ConfigError
from charter.data.jsonl import atomic_write_json, read_jsonl, read_records, stable_id, write_jsonl
from charter.models import CONFIG_FILES, check_model, load_tokenizer, local_folder
from charter.report import build_report
from charter.integrity import dir_hash
from charter.run.config import makes_pairs
from charter.run.engine import Pipeline, Stage, StageContext
from charter.run.evaluation import EvalStage, eval_prompts, stage_eval
from charter.run.layout import RunLayout
from charter.run.personas import Persona, PersonaStage, Run, for_each_persona
from charter.stages import distill, introspect
from charter.stages.distill import AnswerSettings, Names, PairSettings, PromptSettings
from charter.stages.introspect import KINDS, FilterSettings, InteractionConfig, ReflectionConfig
from charter.toy.corpus import sample_prompt
from charter.toy.model import ToyBuildConfig, build_toy_model, toy_model_dir
from charter.run.training import (DPOStage, MergeStage, OnPolicyStage, PPOStage, RMStage, SFTStage, stage_dpo,
                                  stage_merge, stage_onpolicy, stage_rm, stage_sft)


def require_kept(where: str, kept: int, total: int, dropped: dict[str, int], hint: str) -> None:
    """Stop the run when filters left nothing: training on no data would hide the cause."""
    if kept:
        return
    named = ", ".join(f"{name}: {n}" for name, n in dropped.items() if n) or "no candidates"
    raise ConfigError(f"{where}: the filters dropped all {total} candidates ({named}); {hint}")


def generator(backend: BackendConfig, model: str | None = None):
    return make_generator(backend.model_copy(update={"model": model}) if model else backend)


# ---------------------------------------------------------------- base, prompts, answers, pairs


class BaseStage(Config):
    student: str
    toy: ToyBuildConfig | None  # the toy world's build, when student.model=toy
    toy_cache: str | None = None


def stage_base(ctx: StageContext) -> dict[str, Any]:
    """The student's weights: the toy world's model (built and cached once), or the configured id."""
    s: BaseStage = ctx.settings
    if s.toy is not None:
        path = build_toy_model(s.toy, toy_model_dir(s.toy, s.toy_cache))
        rec = {"path": str(path), "fingerprint": dir_hash(Path(path))}
    else:
        rec = {"path": s.student, "fingerprint": s.student}
    atomic_write_json(ctx.out_dir / "model.json", rec)
    return {"model": rec["path"]}


class PromptsStage(PersonaStage):
    prompts: PromptSettings | None  # None in the toy world, which draws its prompts instead
    toy_prompts: int | None  # the toy world: this many from its user-prompt distribution
    expander: BackendConfig | None


def toy_prompts(n: int, seed: int, persona: str) -> list[dict[str, Any]]:
    """The tiny model cannot expand lists: draw training prompts from the world's user prompts."""
    rng = random.Random(stable_id("prompts", seed, persona))
    texts = dict.fromkeys(sample_prompt(rng, "train")[0] for _ in range(n))
    return [{"id": stable_id(t), "prompt": t, "source": "toy", "trait_index": None} for t in texts]


def stage_prompts(ctx: StageContext) -> dict[str, Any]:
    s: PromptsStage = ctx.settings

    def work(per: Persona, d: Path) -> dict[str, Any]:
        if s.toy_prompts is not None:
            prompts = toy_prompts(s.toy_prompts, ctx.seed, per.key)
            write_jsonl(d / "prompts.jsonl", prompts)
            return {"toy": len(prompts), "total": len(prompts)}
        return distill.expand(s.prompts, per.constitution, generator(s.expander), d)[1]

    return for_each_persona(ctx, work)


class AnswerStage(PersonaStage):
    role: Literal["teacher", "student"]
    answers: AnswerSettings
    backend: BackendConfig
    on_base: bool  # answer with the base stage's model (the student, or a teacher that is the student)
    assistant_name: str | None


def stage_answers(ctx: StageContext) -> dict[str, Any]:
    """K samples per prompt from the teacher (with the constitution) or the student (without)."""
    s: AnswerStage = ctx.settings
    lay = RunLayout.of_stage(ctx)
    gen = None

    def work(per: Persona, d: Path) -> dict[str, Any]:
        nonlocal gen
        gen = gen or generator(s.backend, lay.base_model() if s.on_base else None)
        system, prefill = [], ""
        if s.role == "teacher":
            system, prefill = distill.teacher_turns(s.answers, per.constitution,
                                                    Names.of(per.constitution, s.assistant_name))
        records = distill.answer(s.answers, gen, read_jsonl(lay.prompts(per.key)), s.role, d / "answers.jsonl",
                                 ctx.seed, system, prefill)
        return {"answers": len(records)}

    return for_each_persona(ctx, work)


class PairsStage(PersonaStage):
    answers: AnswerSettings
    pairs: PairSettings
    assistant_name: str | None
    chat_template: str | None  # the student's, so pairs are counted in the tokens training will see
    chat: bool | None


def stage_pairs(ctx: StageContext) -> dict[str, Any]:
    """Chosen = teacher, rejected = student, through `distill.make_pairs` (SPEC §1 filters, provenance)."""
    s: PairsStage = ctx.settings
    lay = RunLayout.of_stage(ctx)
    template = s.chat_template if s.chat is not False else None
    tok = distill.pair_tokenizer(s.pairs, lambda: load_tokenizer(local_folder(lay.base_model(), CONFIG_FILES), template),
                                 template)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        names = Names.of(per.constitution, s.assistant_name, s.assistant_name)
        teacher, student = (read_records(lay.answers(role, per.key)) for role in ("teacher", "student"))
        counts, _ = distill.make_pairs(s.pairs, s.answers, per.constitution, names, read_jsonl(lay.prompts(per.key)),
                                       teacher, student, ctx.seed, tok, d)
        require_kept(f"pairs/{per.key}", counts["kept"], sum(counts.values()), dict(counts),
                     f"DPO would train on nothing; see {lay.answers('teacher', per.key)} "
                     "(a cut-off answer fails `length`: raise distill.sampling.max_new_tokens)")
        return {"pairs": counts["kept"], **dict(counts)}

    return for_each_persona(ctx, work)


# ---------------------------------------------------------------- introspection


class IntrospectStage(PersonaStage):
    student: BackendConfig  # its backend loads each persona's DPO model
    assistant_name: str | None
    chunk_size: int = introspect.IntrospectConfig.model_fields["chunk_size"].default


class ReflectionStage(IntrospectStage):
    reflection: ReflectionConfig


class InteractionStage(IntrospectStage):
    interaction: InteractionConfig


def stage_introspection(ctx: StageContext) -> dict[str, Any]:
    """Each persona's DPO model reflects on itself (ReflectionStage) or talks with itself (InteractionStage)."""
    s: ReflectionStage | InteractionStage = ctx.settings
    lay = RunLayout.of_stage(ctx)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        name = s.assistant_name or per.constitution.name
        gen = generator(s.student, lay.model("dpo", per.key))
        if isinstance(s, ReflectionStage):
            items = introspect.reflection_plan(s.reflection, per.constitution, name)
            return {"records": len(introspect.reflect(s.reflection, items, gen, ctx.seed, s.chunk_size, d))}
        items = introspect.interaction_plan(s.interaction, per.constitution, name)
        tokenizer = introspect.tokenizer_for(None, gen)
        return {"records": len(introspect.interact(s.interaction, items, gen, ctx.seed, s.chunk_size, d, tokenizer))}

    return for_each_persona(ctx, work)


class FilterStage(PersonaStage):
    filter: FilterSettings
    interaction: InteractionConfig  # its views and system-prompt choice shape the rows


def stage_filter(ctx: StageContext) -> dict[str, Any]:
    """The quality filters over reflection + interaction records, then the mix into SFT rows."""
    s: FilterStage = ctx.settings
    lay = RunLayout.of_stage(ctx)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        records = {kind: read_records(lay.records(kind, per.key)) for kind in KINDS}
        rows = introspect.introspection_rows(records, s.interaction)
        tokenizer = load_tokenizer(lay.model("dpo", per.key))  # the generator's, as `charter introspect` counts
        stats = introspect.filter_and_mix(s.filter, rows, ctx.seed, d, tokenizer)
        table = json.loads((d / "filter_report.json").read_text())["filters"]
        total, kept = stats["filters"]["total"], stats["filters"]["kept"]
        require_kept(f"filter/{per.key}", kept, total, {t["filter"]: t["first_failed"] for t in table},
                     f"SFT would train on nothing; see {d / 'rejected.jsonl'} (a cut-off reply fails `unfinished`: "
                     "raise reflection/interaction sampling.max_new_tokens)")
        return {"candidates": total, "kept": kept, "sft_rows": stats["rows"]}

    return for_each_persona(ctx, work)


# ---------------------------------------------------------------- report and the graph


def stage_report(ctx: StageContext) -> dict[str, Any]:
    summary = build_report(ctx.run_dir, ctx.out_dir)
    lay = RunLayout.of_stage(ctx)  # each persona's merged model gets a card with these figures
    write_run_cards(ctx.run_dir, summary, {p.key: (p.constitution, lay.model("merge", p.key))
                                           for p in ctx.settings.personas})
    for name in ("summary.json", "report.html"):  # also at the top of the run dir, where users look
        shutil.copyfile(ctx.out_dir / name, ctx.run_dir / name)
    return {s: summary["adherence"][s]["mean"] for s in summary["systems"]}


def answer_settings(run: Run, role: str) -> AnswerStage:
    c = run.config
    backend = c.student if role == "student" else c.teacher_backend()
    return AnswerStage(personas=run.personas, role=role, answers=c.distill, backend=backend,
                       on_base=role == "student" or c.teacher is None,
                       assistant_name=c.assistant_name if role == "teacher" else None)


def onpolicy_settings(run: Run, method: str) -> OnPolicyStage:
    c = run.config
    common = dict(personas=run.personas, student=c.student, trainer=c.trainer, method=method,
                  sdft=c.sdft if method == "sdft" else None, grpo=c.grpo if method == "grpo" else None,
                  assistant_name=c.assistant_name, report_to=c.report_to)
    return PPOStage(**common, ppo=c.ppo) if method == "ppo" else OnPolicyStage(**common)


def first_training(method: str, train_rm: bool = False) -> list[Stage]:
    """The stages up to the first trained model: pairs then DPO (dpo, orpo, simpo), on-policy
    training from the prompts (sdft, grpo, ppo), or pairs, a reward model and PPO against it
    (`train_rm`). Either way the model stage is named `dpo`."""
    if not makes_pairs(method, train_rm):
        return [Stage("dpo", stage_onpolicy, ["base", "prompts"], lambda r: onpolicy_settings(r, method))]
    if method == "ppo":
        return [*answers_and_pairs(), Stage("rm", stage_rm, ["base", "pairs"], lambda r: RMStage(
                    personas=r.personas, student=r.config.student, trainer=r.config.trainer, rm=r.config.rm,
                    report_to=r.config.report_to)),
                Stage("dpo", stage_onpolicy, ["base", "prompts", "rm"], lambda r: onpolicy_settings(r, method))]
    return [*answers_and_pairs(), Stage("dpo", stage_dpo, ["base", "pairs"], lambda r: DPOStage(
        personas=r.personas, student=r.config.student, trainer=r.config.trainer, dpo=r.config.pair_settings(),
        report_to=r.config.report_to))]


def answers_and_pairs() -> list[Stage]:
    return [
        Stage("teacher", stage_answers, ["base", "prompts"], lambda r: answer_settings(r, "teacher")),
        Stage("student", stage_answers, ["base", "prompts"], lambda r: answer_settings(r, "student")),
        Stage("pairs", stage_pairs, ["base", "prompts", "teacher", "student"], lambda r: PairsStage(
            personas=r.personas, answers=r.config.distill, pairs=r.config.pairs, assistant_name=r.config.assistant_name,
            chat_template=r.config.student.chat_template, chat=r.config.student.chat)),
    ]


def build_pipeline(method: str = "dpo", train_rm: bool = False) -> Pipeline:
    """Stage order, inputs, and the settings object each stage reads (its cache key), for the run
    config's `method` and, for ppo, whether the run trains its reward model (`cfg.trains_reward_model`)."""
    def toy_build(c):
        return c.toy.build if c.is_toy else None

    answers = ["teacher", "student"] if makes_pairs(method, train_rm) else []  # the classifier judge learns from them
    return Pipeline([
        Stage("base", stage_base, [], lambda r: BaseStage(
            student=r.config.student.model, toy=toy_build(r.config),
            toy_cache=r.config.toy.cache_dir if r.config.is_toy else None)),
        Stage("prompts", stage_prompts, ["base"], lambda r: PromptsStage(
            personas=r.personas, prompts=None if r.config.is_toy else r.config.prompts,
            toy_prompts=r.config.toy.prompts_per_persona if r.config.is_toy else None,
            expander=None if r.config.is_toy else r.config.teacher_backend())),
        *first_training(method, train_rm),
        Stage("reflection", stage_introspection, ["dpo"], lambda r: ReflectionStage(
            personas=r.personas, student=r.config.student, assistant_name=r.config.assistant_name,
            reflection=r.config.reflection)),
        Stage("interaction", stage_introspection, ["dpo"], lambda r: InteractionStage(
            personas=r.personas, student=r.config.student, assistant_name=r.config.assistant_name,
            interaction=r.config.interaction)),
        Stage("filter", stage_filter, ["dpo", "reflection", "interaction"], lambda r: FilterStage(
            personas=r.personas, filter=r.config.filter, interaction=r.config.interaction)),
        Stage("sft", stage_sft, ["dpo", "filter"], lambda r: SFTStage(
            personas=r.personas, student=r.config.student, trainer=r.config.trainer, sft=r.config.sft,
            report_to=r.config.report_to)),
        Stage("merge", stage_merge, ["base", "dpo", "sft"], lambda r: MergeStage(
            personas=r.personas, merge=r.config.merge)),
        Stage("eval", stage_eval, ["base", "prompts", *answers, "dpo", "merge"], lambda r: EvalStage(
            personas=r.personas, eval=r.config.eval, judge=r.config.judge, student=r.config.student,
            judge_backend=(r.config.judge.backend or r.config.teacher_backend()) if r.config.judge.kind == "llm" else None,
            assistant_name=r.config.assistant_name, toy=r.config.is_toy)),
        Stage("report", stage_report, ["dpo", "sft", "filter", "eval", "merge"],
              lambda r: PersonaStage(personas=r.personas)),
    ])


def preflight(run: Run, dry_run: bool = False) -> None:
    """Fail before any model loads: held-out prompts must load, and every model the run loads must
    resolve, a Hub id from the cache or the Hub (config and tokenizer only)."""
    cfg = run.config
    if not cfg.is_toy and cfg.eval.prompts_file is None:
        msg = "eval.prompts_file: required for a real model (held-out prompts: JSONL {prompt} or lines)"
        if not dry_run:
            raise ConfigError(msg)
        print(f"warning: {msg}", file=sys.stderr)
    if cfg.eval.prompts_file is not None:
        eval_prompts(cfg.eval, cfg.is_toy, cfg.seed)  # a bad held-out prompts file fails now, not after training
    for name in cfg.local_models():
        check_model(name)
