"""The run's eval stage: build each persona's systems, let them answer held-out prompts, score
every reply with the run's judge (one row per reply in `eval/replies.jsonl`), then run the full
evaluation suite on the same systems (`eval/suite.json`): robustness under each attack kind and
multi-turn, coherence, revealed preferences, and DPO+SFT against DPO under attack.

Generation goes through `evaluate.systems.System` and scoring through `evaluate.base.score_all`;
the figures (adherence, intervals, paired tests) are computed by the report from `evaluate.stats`.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from charter.backends import BackendConfig, SamplingParams, make_generator
from charter.config import ConfigError
from charter.data.jsonl import RecordStore, atomic_write_json, read_jsonl, stable_id
from charter.evaluate.base import PersonaScorer, score_all
from charter.evaluate.classifier import labelled_from_answers, train_and_evaluate
from charter.evaluate.judges import Judge, JudgePersonaScorer
from charter.evaluate.preferences import load_traits
from charter.evaluate.robustness import KEEP_GOING, SUFFIXES
from charter.evaluate.runner import load_prompts
from charter.evaluate.suite import Judging, SuiteConfig, run_suite, systems_from_models
from charter.evaluate.systems import System
from charter.run.config import EvalSection, JudgeSection
from charter.run.engine import StageContext
from charter.run.layout import RunLayout
from charter.run.personas import Persona, PersonaStage
from charter.stages.prompts import prompt_overlap
from charter.constitution_prompt import teacher_system_prompt
from charter.toy.scorer import ToyScorer
from charter.toy.world import TOY_WORLD


class EvalStage(PersonaStage):
    eval: EvalSection
    judge: JudgeSection
    judge_backend: BackendConfig | None  # judge.kind=llm: its backend (default: the teacher's)
    student: BackendConfig
    assistant_name: str | None
    toy: bool


def eval_prompts(section: EvalSection, toy: bool, seed: int) -> list[str]:
    """Held-out prompts through `evaluate.runner.load_prompts`: a file, or the toy world's own (independent seed)."""
    spec = section.prompts_file or ("toy" if toy else None)
    if spec is None:
        raise ConfigError("eval.prompts_file: required for a real model (held-out prompts: JSONL {prompt} or lines)")
    return load_prompts(spec, section.n_prompts, seed, TOY_WORLD)


def check_heldout(layout: RunLayout, personas: list[Persona], prompts: list[str]) -> None:
    """Record (in eval/heldout.json, then summary.json) how many eval prompts were training
    prompts of any persona, and warn when there are some: such figures are not held out."""
    train = [r["prompt"] for per in personas for r in read_jsonl(layout.prompts(per.key))]
    report = prompt_overlap(prompts, train)
    atomic_write_json(layout.heldout(), report)
    if report["overlap"]:
        print(f"warning: {report['overlap']} of {report['eval_distinct']} distinct eval prompts are also training "
              f"prompts (e.g. {report['overlap_examples'][0]!r}); adherence on them is not held out", file=sys.stderr)


def scorer(s: EvalStage, layout: RunLayout, seed: int) -> PersonaScorer:
    """The toy world's deterministic scorer, a classifier trained on the run's own answers, or the
    LLM judge asked which persona (or neutral) replied."""
    if s.judge.kind == "toy":
        return ToyScorer()
    if s.judge.kind == "classifier":
        return answer_classifier(s, layout, seed)
    params = SamplingParams(temperature=0.0, max_new_tokens=s.judge.max_new_tokens, seed=0)
    judge = Judge(make_generator(s.judge_backend), cache=layout.stage("eval") / "judge_cache.jsonl", params=params)
    return JudgePersonaScorer(judge, {p.key: " ".join(t.text for t in p.constitution.traits) for p in s.personas})


def answer_classifier(s: EvalStage, layout: RunLayout, seed: int) -> PersonaScorer:
    """Train the judge on teacher answers (labelled with the persona) against student answers
    (neutral) to the training prompts, split by prompt, and report its held-out accuracy first:
    the eval prompts are never among them, so the figures it gives are on unseen prompts."""
    rows = [row for per in s.personas for row in labelled_from_answers(
        layout.answers("teacher", per.key), layout.answers("student", per.key), per.key)]
    clf, m = train_and_evaluate(rows, layout.classifier(), test_frac=s.judge.test_frac, seed=seed,
                                encoder=s.judge.encoder)
    print(f"classifier ({clf.name}): held-out accuracy {m['accuracy']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}], "
          f"macro-F1 {m['macro_f1']:.3f}, on {m['n']} answers to unseen training prompts ({m['train_n']} trained on)",
          file=sys.stderr)
    return clf


class LatestModel:
    """One generator in memory at a time: "base" and "base+constitution" share one load."""

    def __init__(self, backend: BackendConfig):
        self.backend, self.name, self.gen = backend, None, None

    def get(self, model: str):
        if model != self.name:
            self.gen = None
            self.gen, self.name = make_generator(self.backend.model_copy(update={"model": model})), model
        return self.gen


def persona_systems(s: EvalStage, layout: RunLayout, persona: Persona) -> dict[str, tuple[str, str | None]]:
    """system name -> (model, system prompt): base, base + constitution (the ceiling), DPO, DPO+SFT merged."""
    base = layout.model("base", persona.key)
    name = s.assistant_name or persona.constitution.name
    return {"base": (base, None), "base+constitution": (base, teacher_system_prompt(persona.constitution, name)),
            "dpo": (layout.model("dpo", persona.key), None), "dpo+sft": (layout.model("merge", persona.key), None)}


def write_replies(s: EvalStage, lay: RunLayout, prompts: list[str], judge: PersonaScorer,
                  params: SamplingParams) -> dict[str, int]:
    """Every system answers the held-out prompts once; one scored row per (persona, system, prompt)."""
    models = LatestModel(s.student.model_copy(update={"batch_size": s.eval.batch_size}))
    memo: dict[tuple[str, str], list[str]] = {}  # "base" is the same model and prompt for every persona
    with RecordStore(lay.replies()) as store:
        for per in s.personas:
            systems = persona_systems(s, lay, per)
            for system in s.eval.systems:
                model, system_prompt = systems[system]
                ids = [stable_id(per.key, system, i) for i in range(len(prompts))]
                if all(i in store for i in ids):
                    continue
                sys_msg = [{"role": "system", "content": system_prompt}] if system_prompt else []
                key = (model, json.dumps(sys_msg))
                if key not in memo:
                    memo[key] = System(system, models.get(model), system_prompt).reply(prompts, params, progress=True)
                generations = [stable_id(*key, i) for i in range(len(prompts))]  # shared replies share one id
                for rid, gen, p, reply, sc in zip(ids, generations, prompts, memo[key],
                                                  score_all(judge, list(zip(prompts, memo[key])))):
                    store.add({"id": rid, "generation": gen, "persona": per.key, "system": system, "prompt": p,
                               "reply": reply, "label": sc.persona, "well_formed": sc.well_formed,
                               "relevant": sc.relevant})
        counts: dict[str, int] = {}
        for r in store.records.values():
            counts[r["system"]] = counts.get(r["system"], 0) + 1
    return counts


def suite_world(s: EvalStage, judge: PersonaScorer) -> tuple[Judging, dict[str, str]]:
    """The toy world; or, for a real model, the run's scorer, the paper's attack kinds in our
    wording, and the LLM judge for coherence and preferences (skipped, with the reason, without one)."""
    if s.toy:
        return Judging.of(TOY_WORLD), {}
    llm = judge.judge if isinstance(judge, JudgePersonaScorer) else None
    why = f"needs an LLM judge (judge.kind={s.judge.kind})"
    skipped = {} if llm else {"coherence": why, "preferences": why}
    return Judging(scorer=judge, judge=llm, attacks=SUFFIXES, keep_going=KEEP_GOING, traits=load_traits()), skipped


def full_suite(s: EvalStage, lay: RunLayout, prompts: list[str], judge: PersonaScorer, params: SamplingParams,
               seed: int) -> dict[str, Any]:
    """`run_suite` over every system, prefilled with the stage's replies so nothing is generated
    twice, one persona's models in memory at a time (the shared base model stays)."""
    world, skipped = suite_world(s, judge)
    backend = s.student.model_copy(update={"batch_size": s.eval.batch_size})
    models = {per.key: {n: m for n, m in persona_systems(s, lay, per).items() if n in s.eval.systems}
              for per in s.personas}
    systems = systems_from_models(models, lambda m: make_generator(backend.model_copy(update={"model": m})),
                                  read_jsonl(lay.replies()))
    u = s.eval.suite
    cfg = SuiteConfig(attack_prompts=u.attack_prompts, n_pairs=u.n_pairs, bootstrap=u.bootstrap, seed=seed)
    result = {**run_suite(systems, prompts, world, params, cfg), "skipped": skipped, "settings": u.model_dump()}
    atomic_write_json(lay.suite(), result)
    return result


def stage_eval(ctx: StageContext) -> dict[str, Any]:
    """Every system answers the held-out prompts; the judge labels each reply (one row per reply);
    then the full suite (robustness, coherence, preferences, paired test) unless turned off."""
    s: EvalStage = ctx.settings
    lay = RunLayout.of_stage(ctx)
    prompts = eval_prompts(s.eval, s.toy, ctx.seed)
    check_heldout(lay, s.personas, prompts)
    judge = scorer(s, lay, ctx.seed)
    params = SamplingParams(temperature=s.eval.temperature, top_p=s.eval.top_p, max_new_tokens=s.eval.max_new_tokens,
                            seed=ctx.seed)
    counts = write_replies(s, lay, prompts, judge, params)
    if s.eval.suite.enabled:
        result = full_suite(s, lay, prompts, judge, params, ctx.seed)
        counts["attacked_prompts_paired"] = (result["paired"]["pooled"] or {}).get("n", 0)
    return counts
