"""`charter eval`: the typed config and the driver that runs the chosen evaluations.

Everything lands in `<out_dir>/eval.json` (every figure with its CI and n) plus PNG plots.
Systems are named; each evaluation refers to systems by name, so one config compares base,
base + constitution prompt, DPO, DPO + SFT and merged models side by side.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from charter.backends import BackendConfig
from charter.backends.base import SamplingParams
from charter.config import Config, ConfigError
from charter.data.jsonl import DataError, atomic_write_json, iter_jsonl, read_text_file

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
    kind: Literal["llm", "toy"] = "llm"  # toy: charter.toy.judge.ToyJudge, the toy world's rules (no backend)
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


def load_prompts(spec: str | list[str], n: int, seed: int = 0) -> list[str]:
    """Prompts from a list, a JSONL ({"prompt": str | messages} or {"text"}), a .txt, or "toy"."""
    if isinstance(spec, list):
        return spec[:n]
    if spec == "toy":
        from charter.toy.corpus import eval_prompts

        return eval_prompts(n, seed=1234 + seed)
    path = Path(spec)
    if path.suffix != ".jsonl":
        text = read_text_file(path, "`prompts`: one prompt per line, or JSONL {\"prompt\"}")
        return [line.strip() for line in text.splitlines() if line.strip()][:n]
    out = []
    for lineno, obj in iter_jsonl(path, "`prompts`: JSONL {\"prompt\"}", allow_empty=False):
        p = obj.get("prompt", obj.get("text"))
        if isinstance(p, list) and p and isinstance(p[-1], dict):
            p = p[-1].get("content")
        if not isinstance(p, str) or not p:
            raise DataError(f"{path}:{lineno}: field 'prompt' must be a string or a list of messages")
        out.append(p)
    return out[:n]


def _load_texts(spec: str, n: int) -> list[str]:
    path = Path(spec)
    if path.suffix == ".jsonl":
        out = []
        for lineno, obj in iter_jsonl(path, "`capability.texts`: JSONL {\"text\"}", allow_empty=False):
            if not isinstance(obj.get("text"), str):
                raise DataError(f"{path}:{lineno}: field 'text' must be a string")
            out.append(obj["text"])
        return out[:n]
    text = read_text_file(path, "`capability.texts`: one text per line, or JSONL {\"text\"}")
    return [line for line in text.splitlines() if line.strip()][:n]


def make_scorer(cfg: EvalConfig, judge, result: dict):
    if cfg.scorer.kind == "toy":
        from charter.toy.scorer import ToyScorer

        return ToyScorer()
    if cfg.scorer.kind == "classifier":
        from charter.evaluate.classifier import load_classifier

        if cfg.scorer.train:
            from charter.evaluate.classifier import read_labelled, train_and_evaluate

            kw = ({"encoder": cfg.scorer.encoder} if cfg.scorer.encoder else
                  {"model": cfg.scorer.base_model, "epochs": cfg.scorer.epochs, "progress": cfg.progress})
            clf, metrics = train_and_evaluate(read_labelled(cfg.scorer.train), Path(cfg.out_dir) / "classifier",
                                              seed=cfg.seed, **kw)
            result["classifier"] = {k: v for k, v in metrics.items()}
            return clf
        if not cfg.scorer.path:
            raise ConfigError("scorer: kind=classifier needs scorer.path (trained) or scorer.train (labelled JSONL)")
        return load_classifier(cfg.scorer.path)
    from charter.evaluate.judges import JudgePersonaScorer

    if judge is None or cfg.judge.kind != "llm":
        raise ConfigError("scorer.kind=judge needs an LLM judge (judge.backend); with judge.kind=toy use scorer.kind=toy")
    personas = cfg.scorer.personas or {cfg.persona: f"the character '{cfg.persona}'"}
    return JudgePersonaScorer(judge, personas)


def _system_prompt(sc: SystemConfig) -> str | None:
    if not sc.constitution:
        return sc.system_prompt
    from charter.constitution import load_constitution
    from charter.stages.teacher_text import teacher_system_prompt

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

    def get(self, name: str | None, default: int = 0):
        from charter.backends import make_generator
        from charter.evaluate.systems import System

        sc = self.cfg(name, default)
        if sc.name not in self._built:
            self._built[sc.name] = System(sc.name, make_generator(sc.backend), _system_prompt(sc))
        return self._built[sc.name]


def _cap_model(sc: SystemConfig):
    from charter.evaluate.capability import load_lm

    if sc.backend.kind != "hf":
        raise ConfigError(f"capability: system {sc.name!r} must use an hf backend (log-probs are local)")
    return load_lm(sc.backend.model, sc.backend.adapter, sc.backend.device)


def _run_robustness(cfg: EvalConfig, systems: _Systems, prompts: list[str], scorer) -> dict:
    """Suffix attacks (or the toy world's held-out paraphrases of each kind) and the multi-turn attack."""
    from charter.evaluate.robustness import KEEP_GOING, SUFFIXES, run_multiturn, run_suffixes

    rc = cfg.robustness
    table, follow_up = SUFFIXES, KEEP_GOING
    if (rc.attacks or ("toy" if cfg.prompts == "toy" else "suffixes")) == "toy":  # instructions the toy
        # model learned to obey, in wordings it never saw
        from charter.toy.attacks import attack_paraphrases, keep_going_paraphrases

        table, follow_up = attack_paraphrases(heldout=True), keep_going_paraphrases(heldout=True)
    keys = rc.suffixes or list(table)
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise ConfigError(f"robustness.suffixes: unknown {unknown}; known: {list(table)}")
    target = systems.get(rc.system, -1)
    sec = run_suffixes([(target, cfg.persona)], prompts, scorer, cfg.sampling,
                       {k: table[k] for k in keys}, progress=cfg.progress)
    if rc.multiturn:
        sec["multiturn"] = run_multiturn(systems.get(rc.base, 0), target, cfg.persona, prompts, scorer,
                                         cfg.sampling, follow_up, progress=cfg.progress)
    return sec


def run_eval(cfg: EvalConfig) -> dict:
    """Run the configured evaluations; write eval.json and PNGs into cfg.out_dir; return the dict."""
    from charter.evaluate import plots
    from charter.evaluate.judges import Judge

    needs_prompts = set(cfg.evals) - {"capability"}
    if needs_prompts and cfg.prompts is None:  # never the toy world's prompts by accident
        raise ConfigError(f"prompts: required for {', '.join(sorted(needs_prompts))} (held-out prompts: a JSONL "
                          "{\"prompt\"}, a .txt, a list; 'toy' for the toy world's own)")
    prompts = load_prompts(cfg.prompts, cfg.n_prompts, cfg.seed) if needs_prompts else []  # before a model loads
    if needs_prompts and not prompts:
        raise ConfigError("prompts: no prompts loaded")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    systems = _Systems(cfg.systems)
    judge = None
    if cfg.judge.kind == "toy":
        from charter.toy.judge import ToyJudge

        judge = ToyJudge()
    elif cfg.judge.backend is not None:
        from charter.backends import make_generator

        judge = Judge(make_generator(cfg.judge.backend), cache=cfg.judge.cache or out_dir / "judge_cache.jsonl",
                      params=SamplingParams(temperature=0.0, max_new_tokens=cfg.judge.max_new_tokens,
                                            seed=cfg.seed))
    result: dict = {"config": cfg.to_dict(), "n_prompts": len(prompts), "plots": {}}
    t0 = time.time()
    p = cfg.progress
    scorer = None
    if {"adherence", "robustness"} & set(cfg.evals):
        if not cfg.persona:
            raise ConfigError("persona: name the target persona for adherence / robustness")
        scorer = make_scorer(cfg, judge, result)
        result["scorer"] = scorer.name

    if "adherence" in cfg.evals:
        from charter.evaluate.adherence import adherence_report, run_adherence

        res = run_adherence([systems.get(n) for n in systems.order], prompts, scorer, cfg.persona,
                            cfg.sampling, progress=p)
        result["adherence"] = adherence_report(res)
        result["plots"]["adherence"] = plots.plot_adherence(result["adherence"], out_dir / "adherence.png").name

    if "robustness" in cfg.evals:
        sec = _run_robustness(cfg, systems, prompts, scorer)
        result["robustness"] = sec
        result["plots"]["robustness"] = plots.plot_robustness(sec, out_dir / "robustness.png").name

    if "preferences" in cfg.evals:
        from charter.evaluate.preferences import (choice_prompt, compare_rankings, draw_pairs, load_traits,
                                                  run_preferences)

        if judge is None:
            raise ConfigError("preferences needs a judge: judge.backend, or judge.kind=toy")
        pc = cfg.preferences
        traits, ask = load_traits(pc.traits), choice_prompt
        if pc.kind == "toy":
            from charter.toy.grammar import PERSONA_NAMES
            from charter.toy.judge import toy_choice_prompt

            traits, ask = PERSONA_NAMES, toy_choice_prompt
        draws = draw_pairs(prompts, traits, pc.n_pairs, cfg.seed)
        before = run_preferences(systems.get(pc.before, 0), draws, judge, cfg.sampling, pc.bootstrap,
                                 cfg.seed, p, ask)
        after = run_preferences(systems.get(pc.after, -1), draws, judge, cfg.sampling, pc.bootstrap,
                                cfg.seed, p, ask)
        sec = {"before": before, "after": after, "comparison": compare_rankings(before, after)}
        result["preferences"] = sec
        result["plots"]["preferences"] = plots.plot_elo(sec, out_dir / "elo.png").name

    if "coherence" in cfg.evals:
        from charter.evaluate.coherence import run_coherence

        if judge is None:
            raise ConfigError("coherence needs a judge: judge.backend, or judge.kind=toy")
        result["coherence"] = run_coherence(systems.get(cfg.coherence.a, 0), systems.get(cfg.coherence.b, -1),
                                            prompts, judge, cfg.sampling, p)

    if "capability" in cfg.evals:
        from charter.evaluate.capability import compare, evaluate_model, read_mc

        cc = cfg.capability
        if not cc.texts and not cc.mc:
            raise ConfigError("capability: give capability.texts and/or capability.mc")
        texts = _load_texts(cc.texts, cc.max_texts) if cc.texts else []
        mc = {name: read_mc(path) for name, path in cc.mc.items()}
        raw = []
        for sc in (systems.cfg(cc.before, 0), systems.cfg(cc.after, -1)):
            model, tok = _cap_model(sc)
            raw.append(evaluate_model(model, tok, texts, mc, p))
            del model
        sec = {"before_system": systems.cfg(cc.before, 0).name, "after_system": systems.cfg(cc.after, -1).name,
               **compare(raw[0], raw[1], cfg.seed)}
        result["capability"] = sec
        result["plots"]["capability"] = plots.plot_capability(sec, out_dir / "capability.png").name

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
    if "judge" in result:
        j = result["judge"]
        lines.append(f"judge {j['model']}: {j['queries']} answers, {j['unparseable']} unparseable, {j['cached']} cached")
    return lines
