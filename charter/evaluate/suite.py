"""The full evaluation of a run's systems in one call, for the pipeline's report.

Per persona, every system (base, base+constitution, DPO, DPO+SFT, ...) answers the same
held-out prompts, and the suite reports:
- **quality**: adherence, well-formedness and relevance without attack;
- **robustness**: adherence under each attack kind, and under the multi-turn attack (the base
  system writes turn 1, the user says "keep going", the system answers);
- **coherence**: the judge's pairwise verdicts, both orders, for chosen pairs of systems;
- **preferences**: revealed-preference Elo with bootstrap CIs per system, and its rank
  correlation with the base system's;
- **paired**: McNemar of DPO+SFT against DPO alone on the same attacked prompts.
`pooled` gathers robustness over personas; a system shared by personas (the base model) counts
each distinct reply once in its interval.

What depends on the world (scorer, judge, attack wordings, how to offer a trait choice) comes
in a `charter.evaluate.base.World`; the toy world's is `charter.toy.world.TOY_WORLD`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from charter.backends.base import Generator, SamplingParams
from charter.evaluate.adherence import AdherenceResult, score_replies
from charter.evaluate.base import PersonaScorer, World, score_all
from charter.evaluate.coherence import run_coherence
from charter.evaluate.preferences import AskChoice, choice_prompt, compare_rankings, draw_pairs, run_preferences
from charter.evaluate.robustness import Attack, attacked_results, multiturn_conversations
from charter.evaluate.stats import mcnemar_paired, paired_bootstrap, proportion, proportion_of_unique
from charter.evaluate.systems import System

MULTITURN = "multiturn"


@dataclass
class Judging:
    """A `World` with its scorer and judge built once for the whole suite (so the judge's counts
    cover every verdict), plus how attacks are worded and how a trait choice is offered."""

    scorer: PersonaScorer
    judge: Any  # `which_trait`, `compare` and `counts`: an LLM `Judge`, the toy world's `ToyJudge`, or None
    # (None: coherence and preferences are skipped and the summary says so)
    attacks: Mapping[str, Attack]  # kind -> held-out paraphrases
    keep_going: Attack
    traits: list[str]
    ask: AskChoice = choice_prompt

    @classmethod
    def of(cls, world: World) -> "Judging":
        scorer = world.scorer()
        return cls(scorer=scorer, judge=world.judge(), attacks=world.attacks, keep_going=world.keep_going,
                   traits=list(world.traits), ask=world.choice_prompt)


@dataclass
class SuiteConfig:
    base: str = "base"  # writes turn 1 of the multi-turn attack; "before" of the preference comparison
    paired: tuple[str, str] = ("dpo", "dpo+sft")  # McNemar under attack: (alone, with introspection)
    coherence: list[tuple[str, str]] = field(default_factory=lambda: [("dpo", "dpo+sft"), ("base", "dpo+sft")])
    attack_prompts: int | None = None  # prompts per attack kind: None = all; k = a rotating slice of k per kind
    n_pairs: int = 100  # revealed-preference draws per system
    bootstrap: int = 200
    seed: int = 0


class MemoSystem:
    """A `System` that answers each distinct conversation once, so evaluations and personas
    sharing a system (the base model) reuse its replies instead of generating them again."""

    def __init__(self, system: System):
        self.system, self.name, self.system_prompt = system, system.name, system.system_prompt
        self.cache: dict[str, str] = {}

    def prefill(self, conversations: Sequence, replies: Sequence[str]) -> "MemoSystem":
        """Replies generated elsewhere (the pipeline's eval stage), so the suite does not repeat them."""
        self.cache.update((json.dumps(c, sort_keys=True), r) for c, r in zip(conversations, replies))
        return self

    def reply(self, conversations: Sequence, params: SamplingParams, progress: bool = False) -> list[str]:
        keys = [json.dumps(c, sort_keys=True) for c in conversations]
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.system.reply([json.loads(k) for k in todo], params, progress)))
        return [self.cache[k] for k in keys]


ModelSpec = tuple[str, "str | None"]  # (model folder or id, system prompt or None)


class LazyGenerator:
    """A generator made on first use, so listing a run's systems loads no model yet."""

    def __init__(self, make: Callable[[str], Generator], model: str):
        self.make, self.model, self.generator = make, model, None

    def generate(self, requests, params, progress: bool = False):
        if self.generator is None:
            self.generator = self.make(self.model)
        return self.generator.generate(requests, params, progress=progress)

    def release(self) -> None:
        """Drop the loaded model (made again on next use), so a run holds one persona's models at a time."""
        self.generator = None


def systems_from_models(models: dict[str, dict[str, ModelSpec]], make_generator: Callable[[str], Generator],
                        replies: Sequence[dict] = ()) -> dict[str, dict[str, MemoSystem]]:
    """persona -> system name -> (model, system prompt) -> the `run_suite` input: one generator per
    model, one `MemoSystem` per distinct (name, model, system prompt), so the base model is shared
    by the personas, prefilled with `replies` rows `{persona, system, prompt, reply}` (the
    pipeline's eval stage) so the no-attack answers are not generated twice."""
    gens: dict[str, LazyGenerator] = {}
    made: dict[tuple, MemoSystem] = {}
    out: dict[str, dict[str, MemoSystem]] = {}
    for persona, systems in models.items():
        for name, (model, system_prompt) in systems.items():
            key = (name, model, system_prompt)
            if key not in made:
                gen = gens.setdefault(model, LazyGenerator(make_generator, model))
                made[key] = MemoSystem(System(name, gen, system_prompt))
            mine = [r for r in replies if r["persona"] == persona and r["system"] == name]
            out.setdefault(persona, {})[name] = made[key].prefill([r["prompt"] for r in mine],
                                                                 [r["reply"] for r in mine])
    return out


def quality(system: MemoSystem, persona: str, prompts: Sequence[str], world: Judging, params: SamplingParams,
            progress: bool = False) -> dict:
    """Adherence, well-formedness and relevance (among checkable prompts) with no attack."""
    scores = score_all(world.scorer, list(zip(prompts, system.reply(list(prompts), params, progress))))
    wf = [s.well_formed for s in scores if s.well_formed is not None]
    rel = [s.relevant for s in scores if s.relevant is not None]
    return {"adherence": proportion(sum(s.persona == persona for s in scores), len(scores)).to_dict(),
            "well_formed": proportion(sum(wf), len(wf)).to_dict(), "relevant": proportion(sum(rel), len(rel)).to_dict()}


def prompt_slice(prompts: Sequence[str], index: int, size: int | None) -> list[str]:
    """The `index`-th attack's prompts: all of them, or `size` of them starting at index * size
    (wrapping), so that different attacks meet different prompts."""
    if size is None or size >= len(prompts):
        return list(prompts)
    return [prompts[(index * size + i) % len(prompts)] for i in range(size)]


def attack_hits(systems: dict[str, MemoSystem], persona: str, prompts: Sequence[str], world: Judging,
                params: SamplingParams, size: int | None = None, base: str = "base", progress: bool = False
                ) -> dict[str, dict[str, AdherenceResult]]:
    """kind (and "multiturn") -> system -> its scored replies under that attack; `base` writes
    turn 1 of the multi-turn attack."""
    names = list(systems)
    targets = [(systems[n], persona) for n in names]
    out = {}
    for i, (kind, spec) in enumerate(world.attacks.items()):
        results = attacked_results(targets, prompt_slice(prompts, i, size), world.scorer, params, {kind: spec}, progress)
        out[kind] = dict(zip(names, results[kind]))
    prompts = prompt_slice(prompts, len(world.attacks), size)
    first = systems[_base_name(systems, base)].reply(list(prompts), params, progress)
    convs = multiturn_conversations(prompts, first, world.keep_going)
    out[MULTITURN] = {n: score_replies(n, persona, prompts, systems[n].reply(convs, params, progress), world.scorer)
                      for n in names}
    return out


def _base_name(systems: dict[str, MemoSystem], base: str = "base") -> str:
    return base if base in systems else next(iter(systems))


def _rates(hits: dict[str, dict[str, AdherenceResult]]) -> dict:
    return {kind: {n: proportion(sum(r.hits), len(r.hits)).to_dict() for n, r in by.items()} for kind, by in hits.items()}


def paired_under_attack(hits: dict[str, dict[str, AdherenceResult]], pair: tuple[str, str]) -> dict | None:
    """McNemar of `pair[1]` against `pair[0]` over every attacked prompt (all kinds, multi-turn too),
    with a paired bootstrap 95% CI of the difference in rates (`difference`: lo, hi)."""
    a, b = pair
    kinds = [k for k, by in hits.items() if a in by and b in by]
    if not kinds:
        return None
    before = [h for k in kinds for h in hits[k][a].hits]
    after = [h for k in kinds for h in hits[k][b].hits]
    return {"before": a, "after": b, "n": len(before), "rate_before": sum(before) / len(before),
            "rate_after": sum(after) / len(after), **mcnemar_paired(before, after).to_dict(),
            "difference": paired_bootstrap(before, after).to_dict()}


def preferences(systems: dict[str, MemoSystem], prompts: Sequence[str], world: Judging, params: SamplingParams,
                cfg: SuiteConfig, progress: bool = False) -> dict:
    """Elo per trait for every system without a system prompt, compared with the base system's."""
    draws = draw_pairs(prompts, world.traits, cfg.n_pairs, cfg.seed)
    runs = {n: run_preferences(s, draws, world.judge, params, cfg.bootstrap, cfg.seed, progress, world.ask)
            for n, s in systems.items() if not s.system_prompt}
    base = _base_name(systems, cfg.base)
    out = {n: {k: r[k] for k in ("games", "asked", "disagree", "unparseable", "elo", "win_share")}
           for n, r in runs.items()}
    for n, r in runs.items():
        if n != base and base in runs:
            out[n]["vs_base"] = compare_rankings(runs[base], r)
    return out


def persona_suite(persona: str, systems: dict[str, MemoSystem], prompts: Sequence[str], world: Judging,
                  params: SamplingParams, cfg: SuiteConfig, progress: bool = False) -> tuple[dict, dict]:
    """One persona's section, and its raw attacked hits (for pooling and the paired test)."""
    q = {n: quality(s, persona, prompts, world, params, progress) for n, s in systems.items()}
    hits = attack_hits(systems, persona, prompts, world, params, cfg.attack_prompts, cfg.base, progress)
    judged = world.judge is not None
    coherence = [run_coherence(systems[a], systems[b], prompts, world.judge, params, progress)
                 for a, b in cfg.coherence if a in systems and b in systems] if judged else None
    prefs = preferences(systems, prompts, world, params, cfg, progress) if judged else None
    return {"quality": q, "robustness": _rates(hits), "coherence": coherence, "preferences": prefs,
            "paired": paired_under_attack(hits, cfg.paired)}, hits


def pool_robustness(hits: dict[str, dict], shared: dict[str, int]) -> dict:
    """kind -> system -> pooled rate over personas. `shared[name]` is how many personas share one
    copy of that system's replies; its interval counts each distinct reply once (`n_unique`)."""
    out: dict = {}
    for persona_hits in hits.values():
        for kind, by in persona_hits.items():
            for n, r in by.items():
                kn = out.setdefault(kind, {}).setdefault(n, [0, 0])
                kn[0], kn[1] = kn[0] + sum(r.hits), kn[1] + len(r.hits)
    return {kind: {n: proportion_of_unique(k, m, m // shared.get(n, 1)) for n, (k, m) in by.items()}
            for kind, by in out.items()}


def pool_kinds(robustness: dict[str, dict[str, dict]], kinds: Sequence[str]) -> dict[str, dict]:
    """system -> one share over `kinds` (the attack kinds, multi-turn apart) from the pooled
    per-kind shares, its interval over the distinct replies."""
    out: dict[str, list[int]] = {}
    for kind in kinds:
        for n, p in robustness.get(kind, {}).items():
            t = out.setdefault(n, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + p["k"], t[1] + p["n"], t[2] + p["n_unique"]
    return {n: proportion_of_unique(k, m, u) for n, (k, m, u) in out.items()}


def _concat(hits: dict[str, dict], names: Sequence[str]) -> dict[str, dict[str, AdherenceResult]]:
    """kind -> system -> hits of every persona that has all of `names` (distinct models per persona)."""
    having = [h for h in hits.values() if all(n in by for by in h.values() for n in names)]
    kinds = list(having[0]) if having else []
    return {k: {n: AdherenceResult(n, "*", [x for h in having for x in h[k][n].hits], []) for n in names}
            for k in kinds}


def release_unused(done: dict[str, MemoSystem], later: Sequence[dict]) -> None:
    """Free the models of a finished persona that no later persona uses (the shared base stays)."""
    needed = {id(getattr(s, "system", s).generator) for systems in later for s in systems.values()}
    for s in done.values():
        gen = s.system.generator
        if id(gen) not in needed and hasattr(gen, "release"):
            gen.release()


def run_suite(personas: dict[str, dict[str, System]], prompts: Sequence[str], world: World | Judging,
              params: SamplingParams, cfg: SuiteConfig | None = None, progress: bool = False) -> dict:
    """persona -> {system name -> System} (pass the *same* System object where personas share one,
    e.g. the base model; a `MemoSystem` may come prefilled with replies) -> the summary dict
    (see the module docstring)."""
    cfg = cfg or SuiteConfig()
    world = Judging.of(world) if isinstance(world, World) else world
    memo: dict[int, MemoSystem] = {}
    sections, hits, owners = {}, {}, {}
    for i, (persona, systems) in enumerate(personas.items()):
        wrapped = {n: memo.setdefault(id(s), s if isinstance(s, MemoSystem) else MemoSystem(s))
                   for n, s in systems.items()}
        for n, s in systems.items():
            owners.setdefault(n, []).append(id(s))
        sections[persona], hits[persona] = persona_suite(persona, wrapped, prompts, world, params, cfg, progress)
        release_unused(wrapped, list(personas.values())[i + 1:])
    shared = {n: len(ids) // len(set(ids)) for n, ids in owners.items()}
    robustness = pool_robustness(hits, shared)
    return {"personas": sections, "attack_kinds": list(world.attacks) + [MULTITURN],
            "pooled": {"robustness": robustness, "attacks": pool_kinds(robustness, list(world.attacks))},
            "paired": {"per_persona": {p: paired_under_attack(h, cfg.paired) for p, h in hits.items()},
                       "pooled": paired_under_attack(_concat(hits, cfg.paired), cfg.paired)},
            "judge": {"name": world.judge.name, **world.judge.counts.to_dict()} if world.judge is not None else None}
