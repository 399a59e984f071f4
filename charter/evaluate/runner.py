"""`charter eval`: the typed config and the driver that runs the chosen evaluations.

Everything lands in `<out_dir>/eval.json` (every figure with its CI and n) plus PNG plots.
Systems are named; each evaluation refers to systems by name, so one config compares base,
base + constitution prompt, DPO, DPO + SFT and merged models side by side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from charter.backends import BackendConfig, make_generator
from charter.backends.base import SamplingParams
from charter.config import Config, ConfigError
from charter.constitution import load_constitution
from charter.constitution_prompt import teacher_system_prompt
from charter.data.jsonl import atomic_write_json
from charter.data.texts import read_texts
from charter.evaluate import plots
from charter.evaluate.ab import ABSource, ab_lines, ab_logodds, compare_ab, load_sources
from charter.evaluate.adherence import adherence_report, run_adherence
from charter.evaluate.base import World
from charter.evaluate.capability import compare, evaluate_model, load_lm, read_mc
from charter.evaluate.classifier import load_classifier, read_labelled, train_and_evaluate
from charter.evaluate.coherence import run_coherence
from charter.evaluate.judges import Judge, JudgePersonaScorer
from charter.evaluate.preferences import choice_prompt, compare_rankings, draw_pairs, load_traits, run_preferences
from charter.evaluate.robustness import KEEP_GOING, SUFFIXES, run_multiturn, run_suffixes
from charter.evaluate.systems import System

EVALS = ("adherence", "robustness", "preferences", "coherence", "capability")


class SystemConfig(Config):
    name: str
    backend: BackendConfig
    system_prompt: str | None = None  # e.g. the constitution prompt, for the "base + prompt" baseline
    constitution: str | None = None  # path: build the system prompt from this constitution instead
    assistant_name: str = "Assistant"  # the name the constitution prompt gives the assistant


class ScorerConfig(Config):
    kind: Literal["toy", "classifier", "judge"] = "judge"
    path: str | None = None  # classifier: a trained classifier folder
    train: str | None = None  # classifier: labelled JSONL {text, label}; trains into <out_dir>/classifier
    base_model: str | None = None  # classifier to fine-tune (e.g. ModernBERT-base); None = tiny local one
    encoder: str | None = None  # classifier: a frozen sentence encoder's folder (linear head on it) instead
    epochs: int = 4
    personas: dict[str, str] = {}  # judge: persona name -> description (the target persona at least)


class JudgeConfig(Config):
    kind: Literal["llm", "toy"] = "llm"  # toy: the toy world's rules (charter.toy.judge.ToyJudge, no backend)
    backend: BackendConfig | None = None  # llm: the judge model; None = no judge (preferences / coherence need one)
    cache: str | None = None  # default <out_dir>/judge_cache.jsonl
    max_new_tokens: int = 256


class RobustnessConfig(Config):
    system: str | None = None  # attacked system; default: the last one
    base: str | None = None  # writes turn 1 of the multi-turn attack; default: the first one
    suffixes: list[str] | None = None  # subset of robustness.SUFFIXES keys; None = all 8
    attacks: Literal["suffixes", "toy"] | None = None  # toy: the toy world's held-out paraphrases of each kind;
    # None: toy when prompts is "toy", else suffixes
    multiturn: bool = True


class PreferencesConfig(Config):
    kind: Literal["traits", "toy"] = "traits"  # toy: traits = the toy personas, asked via their constitutions
    before: str | None = None  # default: first system
    after: str | None = None  # default: last system
    n_pairs: int = 100
    traits: str | None = None  # kind=traits: file, one trait per line; None = the built-in ~150
    bootstrap: int = 200


class CoherenceConfig(Config):
    a: str | None = None  # default: first system
    b: str | None = None  # default: last system


class CapabilityConfig(Config):
    before: str | None = None
    after: str | None = None
    texts: str | None = None  # held-out texts for perplexity: JSONL {"text"} or a .txt (one per line)
    max_texts: int = 200
    mc: dict[str, str] = {}  # name -> JSONL {question, choices, answer}
    ab: dict[str, str | ABSource] = {}  # name -> JSONL "... Options: (A) ... (B) ..." (see evaluate/ab.py)


class EvalConfig(Config):
    out_dir: str = "eval"
    persona: str = ""  # the target persona's name (what the scorer should say)
    prompts: str | list[str] | None = None  # held-out prompts: JSONL {"prompt"} / .txt / a list / "toy"
    n_prompts: int = 50
    systems: list[SystemConfig] = []
    scorer: ScorerConfig = ScorerConfig()
    judge: JudgeConfig = JudgeConfig()
    sampling: SamplingParams = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=128, seed=0)
    evals: list[Literal["adherence", "robustness", "preferences", "coherence", "capability"]] = list(EVALS)
    robustness: RobustnessConfig = RobustnessConfig()
    preferences: PreferencesConfig = PreferencesConfig()
    coherence: CoherenceConfig = CoherenceConfig()
    capability: CapabilityConfig = CapabilityConfig()
    seed: int = 0
    progress: bool = True


def _world(world: World | None, setting: str) -> World:
    """The toy world passed in by the caller, for a setting that names it."""
    if world is None or world.name != "toy":
        raise ConfigError(f"{setting}: needs the toy world, which this caller did not load")
    return world


def load_prompts(spec: str | list[str], n: int, seed: int = 0, world: World | None = None) -> list[str]:
    """Prompts from a list, a prompts file (`charter.data.texts` rules), or "toy" (the world's own)."""
    if isinstance(spec, list):
        return spec[:n]
    if spec == "toy":
        return _world(world, "prompts: toy").prompts(n, seed)
    return read_texts(spec, "prompt", n)


def _classifier_scorer(cfg: EvalConfig, result: dict):
    """A trained persona classifier: loaded from `scorer.path`, or trained now on `scorer.train`."""
    if cfg.scorer.train:
        kw = ({"encoder": cfg.scorer.encoder} if cfg.scorer.encoder else
              {"model": cfg.scorer.base_model, "epochs": cfg.scorer.epochs, "progress": cfg.progress})
        clf, metrics = train_and_evaluate(read_labelled(cfg.scorer.train), Path(cfg.out_dir) / "classifier",
                                          seed=cfg.seed, **kw)
        result["classifier"] = dict(metrics)
        return clf
    if not cfg.scorer.path:
        raise ConfigError("scorer: kind=classifier needs scorer.path (trained) or scorer.train (labelled JSONL)")
    return load_classifier(cfg.scorer.path)


def make_scorer(cfg: EvalConfig, judge, result: dict, world: World | None = None):
    if cfg.scorer.kind == "toy":
        return _world(world, "scorer.kind=toy").scorer()
    if cfg.scorer.kind == "classifier":
        return _classifier_scorer(cfg, result)
    if judge is None or cfg.judge.kind != "llm":
        raise ConfigError("scorer.kind=judge needs an LLM judge (judge.backend); with judge.kind=toy use scorer.kind=toy")
    personas = cfg.scorer.personas or {cfg.persona: f"the character '{cfg.persona}'"}
    return JudgePersonaScorer(judge, personas)


def make_judge(cfg: EvalConfig, out_dir: Path, world: World | None):
    """The toy world's rule judge, an LLM judge on its backend, or None (no judge configured)."""
    if cfg.judge.kind == "toy":
        return _world(world, "judge.kind=toy").judge()
    if cfg.judge.backend is None:
        return None
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.judge.max_new_tokens, seed=cfg.seed)
    return Judge(make_generator(cfg.judge.backend), cache=cfg.judge.cache or out_dir / "judge_cache.jsonl",
                 params=params)


def _system_prompt(sc: SystemConfig) -> str | None:
    if not sc.constitution:
        return sc.system_prompt
    return teacher_system_prompt(load_constitution(sc.constitution), sc.assistant_name)


class _Systems:
    """Name -> System, built lazily (a model is loaded once and only if some evaluation uses it)."""

    def __init__(self, cfgs: list[SystemConfig]):
        if not cfgs:
            raise ConfigError("systems: name at least one system to evaluate")
        names = [s.name for s in cfgs]
        if len(set(names)) != len(names):
            raise ConfigError(f"systems: names must be unique, got {names}")
        self.cfgs = {s.name: s for s in cfgs}
        self.order = names
        self._built: dict = {}

    def cfg(self, name: str | None, default: int) -> SystemConfig:
        name = name or self.order[default]
        if name not in self.cfgs:
            raise ConfigError(f"unknown system {name!r}; known: {self.order}")
        return self.cfgs[name]

    def get(self, name: str | None, default: int = 0) -> System:
        sc = self.cfg(name, default)
        if sc.name not in self._built:
            self._built[sc.name] = System(sc.name, make_generator(sc.backend), _system_prompt(sc))
        return self._built[sc.name]


@dataclass
class EvalRun:
    """What every evaluation draws on: its config, the systems, prompts, judge and scorer."""

    cfg: EvalConfig
    systems: _Systems
    prompts: list[str]
    judge: Any
    scorer: Any
    world: World | None


def _need_judge(run: EvalRun, name: str):
    if run.judge is None:
        raise ConfigError(f"{name} needs a judge: judge.backend, or judge.kind=toy")
    return run.judge


def eval_adherence(run: EvalRun) -> dict:
    cfg, systems = run.cfg, run.systems
    res = run_adherence([systems.get(n) for n in systems.order], run.prompts, run.scorer, cfg.persona,
                        cfg.sampling, progress=cfg.progress)
    return adherence_report(res)


def eval_robustness(run: EvalRun) -> dict:
    """Suffix attacks, or a world's held-out paraphrases of each attack kind (instructions the toy
    model learned to obey, in wordings it never saw), and the multi-turn attack."""
    cfg, rc = run.cfg, run.cfg.robustness
    table, follow_up = SUFFIXES, KEEP_GOING
    if (rc.attacks or ("toy" if cfg.prompts == "toy" else "suffixes")) == "toy":
        toy = _world(run.world, "robustness.attacks=toy")
        table, follow_up = toy.attacks, toy.keep_going
    keys = rc.suffixes or list(table)
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise ConfigError(f"robustness.suffixes: unknown {unknown}; known: {list(table)}")
    target = run.systems.get(rc.system, -1)
    sec = run_suffixes([(target, cfg.persona)], run.prompts, run.scorer, cfg.sampling,
                       {k: table[k] for k in keys}, progress=cfg.progress)
    if rc.multiturn:
        sec["multiturn"] = run_multiturn(run.systems.get(rc.base, 0), target, cfg.persona, run.prompts, run.scorer,
                                         cfg.sampling, follow_up, progress=cfg.progress)
    return sec


def eval_preferences(run: EvalRun) -> dict:
    cfg, pc = run.cfg, run.cfg.preferences
    judge = _need_judge(run, "preferences")
    traits, ask = load_traits(pc.traits), choice_prompt
    if pc.kind == "toy":
        toy = _world(run.world, "preferences.kind=toy")
        traits, ask = toy.traits, toy.choice_prompt
    draws = draw_pairs(run.prompts, traits, pc.n_pairs, cfg.seed)
    before, after = (run_preferences(run.systems.get(name, default), draws, judge, cfg.sampling, pc.bootstrap,
                                     cfg.seed, cfg.progress, ask)
                     for name, default in ((pc.before, 0), (pc.after, -1)))
    return {"before": before, "after": after, "comparison": compare_rankings(before, after)}


def eval_coherence(run: EvalRun) -> dict:
    cfg, judge = run.cfg, _need_judge(run, "coherence")
    return run_coherence(run.systems.get(cfg.coherence.a, 0), run.systems.get(cfg.coherence.b, -1), run.prompts,
                         judge, cfg.sampling, cfg.progress)


def eval_capability(run: EvalRun) -> dict:
    cfg, cc = run.cfg, run.cfg.capability
    if not cc.texts and not cc.mc and not cc.ab:
        raise ConfigError("capability: give capability.texts, capability.mc and/or capability.ab")
    texts = read_texts(cc.texts, "text", cc.max_texts) if cc.texts else []
    mc, ab = {name: read_mc(path) for name, path in cc.mc.items()}, load_sources(cc.ab)
    pair = (run.systems.cfg(cc.before, 0), run.systems.cfg(cc.after, -1))
    raw = []
    for sc in pair:
        if sc.backend.kind != "hf":
            raise ConfigError(f"capability: system {sc.name!r} must use an hf backend (log-probs are local)")
        model, tok = load_lm(sc.backend.model, sc.backend.adapter, sc.backend.device)
        raw.append({**evaluate_model(model, tok, texts, mc, cfg.progress),
                    "ab": {k: ab_logodds(model, tok, v, cfg.progress) for k, v in ab.items()}})
        del model
    return {"before_system": pair[0].name, "after_system": pair[1].name, **compare(raw[0], raw[1], cfg.seed),
            "ab": compare_ab(ab, raw[0]["ab"], raw[1]["ab"])}


# name -> (evaluation, (its plot, file name) or None); the chosen ones run in this order
EVALUATIONS: dict[str, tuple[Callable[[EvalRun], dict], tuple[Callable, str] | None]] = {
    "adherence": (eval_adherence, (plots.plot_adherence, "adherence.png")),
    "robustness": (eval_robustness, (plots.plot_robustness, "robustness.png")),
    "preferences": (eval_preferences, (plots.plot_elo, "elo.png")),
    "coherence": (eval_coherence, None),
    "capability": (eval_capability, (plots.plot_capability, "capability.png")),
}


def _prompts(cfg: EvalConfig, world: World | None) -> list[str]:
    """Held-out prompts, loaded before any model is: every evaluation but capability needs them."""
    needs = set(cfg.evals) - {"capability"}
    if not needs:
        return []
    if cfg.prompts is None:  # never the toy world's prompts by accident
        raise ConfigError(f"prompts: required for {', '.join(sorted(needs))} (held-out prompts: a JSONL "
                          "{\"prompt\"}, a .txt, a list; 'toy' for the toy world's own)")
    prompts = load_prompts(cfg.prompts, cfg.n_prompts, cfg.seed, world)
    if not prompts:
        raise ConfigError("prompts: no prompts loaded")
    return prompts


def run_eval(cfg: EvalConfig, world: World | None = None) -> dict:
    """Run the configured evaluations; write eval.json and PNGs into cfg.out_dir; return the dict.
    `world`: the toy world, for settings that name it (`prompts: toy`, `kind: toy`)."""
    prompts = _prompts(cfg, world)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    systems = _Systems(cfg.systems)
    judge = make_judge(cfg, out_dir, world)
    result: dict = {"config": cfg.to_dict(), "n_prompts": len(prompts), "plots": {}}
    t0 = time.time()
    scorer = None
    if {"adherence", "robustness"} & set(cfg.evals):
        if not cfg.persona:
            raise ConfigError("persona: name the target persona for adherence / robustness")
        scorer = make_scorer(cfg, judge, result, world)
        result["scorer"] = scorer.name
    run = EvalRun(cfg, systems, prompts, judge, scorer, world)
    for name in (n for n in EVALUATIONS if n in cfg.evals):
        evaluate, plot = EVALUATIONS[name]
        result[name] = evaluate(run)
        if plot is not None:
            result["plots"][name] = plot[0](result[name], out_dir / plot[1]).name
    if judge is not None:
        result["judge"] = {"model": judge.name, **judge.counts.to_dict()}
        judge.close()
    result["seconds"] = round(time.time() - t0, 2)
    atomic_write_json(out_dir / "eval.json", result)
    return result


def _fmt(p: dict) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] (n={p['n']})" if p["n"] else "n/a (n=0)"


def summary_lines(result: dict) -> list[str]:
    """A few human-readable lines for the terminal; eval.json has everything."""
    lines = []
    for s in result.get("adherence", {}).get("systems", []):
        lines.append(f"adherence  {s['system']:<16} {_fmt(s)}")
    rob = result.get("robustness")
    if rob:
        for name, p in rob["overall"]["systems"].items():
            lines.append(f"robustness {name:<16} all suffixes {_fmt(p)}")
        if "multiturn" in rob:
            lines.append(f"robustness multi-turn      {_fmt(rob['multiturn'])}")
    pref = result.get("preferences")
    if pref:
        c = pref["comparison"]
        lines.append(f"preferences games {pref['before']['games']}/{pref['after']['games']}, "
                     f"spearman rho {c['spearman_rho']:.3f} over {c['n_traits']} traits")
    coh = result.get("coherence")
    if coh:
        lines.append(f"coherence  {coh['b']} vs {coh['a']}: win rate {coh['win_rate_b']:.3f} +- {coh['se']:.3f} "
                     f"(n={coh['n']}, disagree {coh['disagree']}, unparseable {coh['unparseable']}, "
                     f"tie {coh.get('tie', 0)})")
    cap = result.get("capability")
    if cap and "perplexity" in cap:
        pp = cap["perplexity"]
        lines.append(f"perplexity {pp['before']['perplexity']:.2f} -> {pp['after']['perplexity']:.2f}")
    for name, sec in (cap or {}).get("multiple_choice", {}).items():
        a = sec["acc"]
        lines.append(f"mc {name}: acc {a['before']['value']:.3f} -> {a['after']['value']:.3f} "
                     f"(McNemar exact p={a['mcnemar']['p_exact']:.3g})")
    lines += ab_lines((cap or {}).get("ab", {}))
    if "judge" in result:
        j = result["judge"]
        lines.append(f"judge {j['model']}: {j['queries']} answers, {j['unparseable']} unparseable, {j['cached']} cached")
    return lines
