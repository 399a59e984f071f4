"""Base-model bootstrapping: from a pretrained-only model to instruction following, in stages.

Stages (SPEC §5): explicit instructions -> questions -> generation tasks -> evaluation
tasks -> revision tasks -> constitutional. For each stage, the *previous* stage's model
answers that stage's tasks through completion-style few-shot prompts
(`Instruction: ... Response: ... END`), a program checks every answer (verifiable.py),
passing answers become SFT rows and (pass, fail) pairs become DPO pairs, and the model is
trained SFT -> DPO with Charter's training core. Where no sample passes, the task's
reference answer can stand in (`use_references`), and the summary counts how often.

Every prompt given to a model here is plain text; `assert_no_template` refuses any that
carries chat-template markers or special tokens, because a template leaking into a base
model's input silently changes what is being measured.

Evaluation: a fixed held-out task set, greedy decoding, scored by the same checks, in
several framings; each stage is compared with the previous one on the same tasks
(McNemar on the paired outcomes, Wilson CI on each accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from charter.backends.base import GenerationRequest, SamplingParams
from charter.cai.base_lm import BaseLMConfig
from charter.cai.verifiable import FAMILIES, Task, check_response, make_tasks
from charter.chat import FRAME_STOPS, fallback_render
from charter.chat_render import TemplateLeakError, assert_no_template, template_markers  # noqa: F401 - re-exported
from charter.config import Config
from charter.data.jsonl import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl

STAGES = ["instructions", "questions", "generation", "evaluation", "revision", "constitutional"]
Framing = Literal["raw", "question", "instruction", "fewshot", "hh"]


class Frame(Config):
    """The completion-style frame for few-shot prompts; user-definable."""

    instruction: str = "Instruction: "
    response: str = "Response:"
    end: str = "END"

    def example(self, instruction: str, response: str) -> str:
        return f"{self.instruction}{instruction}\n{self.response} {response} {self.end}"

    def prompt(self, instruction: str, shots: list[tuple[str, str]] = ()) -> str:
        parts = [self.example(i, r) for i, r in shots] + [f"{self.instruction}{instruction}\n{self.response}"]
        return "\n\n".join(parts)

    def stops(self) -> list[str]:
        return [self.end, "\n" + self.instruction.strip()]


# ---------------------------------------------------------------------------------------------
# framing (the guard itself, `assert_no_template`, lives in charter.chat_render)


def framed(framing: Framing, instruction: str, frame: Frame, shots: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(prompt text, stop strings) for one framing of one instruction."""
    if framing == "raw":
        return instruction + "\n", ["\n\n"]
    if framing == "question":
        return f"Q: {instruction}\nA:", ["\nQ:", "\n\n"]
    if framing == "instruction":
        return frame.prompt(instruction), frame.stops() + ["\n\n"]
    if framing == "fewshot":
        return frame.prompt(instruction, shots), frame.stops() + ["\n\n"]
    # hh: the plain transcript that the training core uses for template-less models
    return fallback_render([{"role": "user", "content": instruction}], add_generation_prompt=True), list(FRAME_STOPS)


def complete(gen, tokenizer, prompts: list[tuple[str, list[str]]], params: SamplingParams) -> list[list[str]]:
    """Guarded completion-style generation: every prompt is checked before the model sees it."""
    for text, _ in prompts:
        assert_no_template(text, tokenizer)
    by_stops: dict[tuple, list[int]] = {}
    for i, (_, stops) in enumerate(prompts):
        by_stops.setdefault(tuple(stops), []).append(i)
    results: dict[int, list[str]] = {}
    for stops, idx in by_stops.items():
        comps = gen.generate([GenerationRequest(prompt=prompts[i][0]) for i in idx],
                             params.model_copy(update={"stop": list(stops)}))
        for i, cs in zip(idx, comps):
            results[i] = [c.text.strip() for c in cs]
    return [results[i] for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------
# config


class BootstrapConfig(Config):
    out_dir: str = "runs/bootstrap"
    base_model: str | None = None  # an HF folder; None = build the toy base LM (`base_lm`) under out_dir
    base_lm: BaseLMConfig = BaseLMConfig()
    stages: list[str] = Field(default_factory=lambda: list(STAGES))
    frame: Frame = Frame()
    fewshot: int = Field(3, ge=0)
    train_tasks: int = Field(120, ge=1)  # tasks per stage
    samples: int = Field(4, ge=1)  # model samples per task
    use_references: bool = True  # a task's reference answer stands in when no sample passes
    replay: bool = True  # each stage's SFT set also holds the earlier stages' rows
    sampling: SamplingParams = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=32)
    eval_families: list[str] = Field(default_factory=lambda: ["instructions", "questions"])
    eval_tasks: int = Field(60, ge=1)  # per family
    baseline_framings: list[Framing] = Field(default_factory=lambda: ["raw", "question", "instruction", "fewshot", "hh"])
    eval_framings: list[Framing] = Field(default_factory=lambda: ["hh", "fewshot"])
    eval_max_new_tokens: int = 32
    sft: dict[str, Any] = Field(default_factory=lambda: {"lr": 1e-3, "epochs": 3, "batch_size": 16, "max_length": 256})
    dpo: dict[str, Any] = Field(default_factory=lambda: {"lr": 2e-4, "epochs": 1, "batch_size": 8, "max_length": 256})
    device: str | None = None  # None = cuda if available
    min_pairs: int = 4  # fewer DPO pairs than this: the stage stops after SFT
    seed: int = 0

    @field_validator("stages", "eval_families")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in FAMILIES]
        if bad:
            raise ValueError(f"unknown stage/family {bad}; known: {STAGES}")
        return v


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(gen, tokenizer, tasks: list[Task], framings: list[str], cfg: BootstrapConfig
             ) -> tuple[dict[str, list[bool]], dict[str, list[str]]]:
    """Per framing, per task: did the greedy answer pass every check? Also returns the answers."""
    shots = [(t.instruction, t.reference) for t in make_tasks("instructions", cfg.fewshot, seed=9999)]
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed)
    passed, answers = {}, {}
    for fr in framings:
        replies = complete(gen, tokenizer, [framed(fr, t.instruction, cfg.frame, shots) for t in tasks], params)
        answers[fr] = [r[0] for r in replies]
        passed[fr] = [check_response(t, r[0])[0] for t, r in zip(tasks, replies)]
    return passed, answers


def compare(prev: list[bool] | None, cur: list[bool], families: list[str]) -> dict:
    """Accuracy with Wilson CI (overall and per task family) and McNemar against `prev` (same tasks)."""
    from charter.evaluate.stats import mcnemar_paired, proportion

    p = proportion(sum(cur), len(cur))
    by = {f: sum(c for c, g in zip(cur, families) if g == f) / families.count(f) for f in dict.fromkeys(families)}
    return {"accuracy": p.value, "ci": [p.lo, p.hi], "k": p.k, "n": p.n, "by_family": by,
            "mcnemar": mcnemar_paired(prev, cur).to_dict() if prev is not None else None}


# ---------------------------------------------------------------------------------------------
# stages


def stage_data(gen, tokenizer, family: str, cfg: BootstrapConfig, stage_seed: int) -> tuple[list, list, dict]:
    """The previous model answers this stage's tasks few-shot; checks sort the answers into SFT rows and pairs."""
    tasks = make_tasks(family, cfg.train_tasks, seed=stage_seed)
    shots = [(t.instruction, t.reference) for t in make_tasks(family, cfg.fewshot, seed=stage_seed + 5000)]
    params = cfg.sampling.model_copy(update={"n": cfg.samples, "seed": cfg.seed + stage_seed})
    samples = complete(gen, tokenizer, [framed("fewshot", t.instruction, cfg.frame, shots) for t in tasks], params)
    sft, pairs, stats = [], [], {"tasks": len(tasks), "samples": 0, "passing_samples": 0, "tasks_solved": 0,
                                 "references_used": 0}
    for t, outs in zip(tasks, samples):
        good = [o for o in outs if o and check_response(t, o)[0]]
        bad = [o for o in outs if not (o and check_response(t, o)[0])]
        stats["samples"] += len(outs)
        stats["passing_samples"] += len(good)
        stats["tasks_solved"] += bool(good)
        chosen = good[0] if good else (t.reference if cfg.use_references else None)
        if chosen is None:
            continue
        stats["references_used"] += not good
        prompt = [{"role": "user", "content": t.instruction}]
        sft.append({"messages": prompt + [{"role": "assistant", "content": chosen}], "meta": {"task": t.id}})
        if bad and bad[0]:
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": bad[0]}], "meta": {"task": t.id}})
    stats["sft_rows"], stats["pairs"] = len(sft), len(pairs)
    return sft, pairs, stats


def train_stage(model: str, sft_path: Path, pairs_path: Path, n_pairs: int, stage_dir: Path,
                cfg: BootstrapConfig) -> str:
    """SFT from the previous model, then DPO from the SFT model (training core, full fine-tuning)."""
    from charter.train.sft import SFTConfig, train_sft

    out = str(train_sft(SFTConfig(**{**cfg.sft, "model": model, "data": str(sft_path),
                                    "output_dir": str(stage_dir / "sft"), "seed": cfg.seed})))
    if n_pairs >= cfg.min_pairs:
        from charter.train.dpo import DPOConfig, train_dpo

        out = str(train_dpo(DPOConfig(**{**cfg.dpo, "model": out, "data": str(pairs_path),
                                        "output_dir": str(stage_dir / "dpo"), "seed": cfg.seed})))
    return out


def _load(model: str, device: str | None = None):
    from charter.backends.hf import HFGenerator

    gen = HFGenerator(model, batch_size=32, device=device, chat=False)
    return gen, gen.tokenizer


def run_bootstrap(cfg: BootstrapConfig) -> dict:
    """Baseline, then each stage (data from the previous model -> SFT -> DPO -> eval). Resumable per stage."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    model = cfg.base_model
    if model is None:
        from charter.cai.base_lm import build_base_lm

        model = str(build_base_lm(cfg.base_lm, out / "base_model"))
    eval_tasks = [t for f in cfg.eval_families for t in make_tasks(f, cfg.eval_tasks, seed=10_000)]
    fams = [t.id.split("-")[0] for t in eval_tasks]
    base_dir = out / "stage_0_baseline"
    if not (base_dir / "done.json").exists():
        gen, tok = _load(model, cfg.device)
        results, answers = evaluate(gen, tok, eval_tasks,
                                    list(dict.fromkeys(cfg.baseline_framings + cfg.eval_framings)), cfg)
        atomic_write_json(base_dir / "eval.json", {"model": model, "results": results, "answers": answers,
                                                   "figures": {f: compare(None, r, fams) for f, r in results.items()}})
        atomic_write_json(base_dir / "done.json", {"model": model})
    prev = json.loads((base_dir / "eval.json").read_text())["results"]
    rows = [{"stage": "baseline", "framing": f, **compare(None, r, fams)} for f, r in prev.items()]
    for k, family in enumerate(cfg.stages, 1):
        sdir = out / f"stage_{k}_{family}"
        done = sdir / "done.json"
        if not done.exists():
            gen, tok = _load(model, cfg.device)
            sft, pairs, stats = stage_data(gen, tok, family, cfg, stage_seed=k)
            if cfg.replay:  # earlier stages' SFT rows too, so a stage does not unlearn the ones before
                sft += [r for j, f in enumerate(cfg.stages[:k - 1], 1)
                        for r in read_jsonl(out / f"stage_{j}_{f}" / "sft.jsonl") if r["meta"].get("task", "").startswith(f)]
                stats["sft_rows"] = len(sft)
            write_jsonl(sdir / "sft.jsonl", sft)
            write_jsonl(sdir / "pairs.jsonl", pairs)
            new_model = train_stage(model, sdir / "sft.jsonl", sdir / "pairs.jsonl", len(pairs), sdir, cfg)
            gen, tok = _load(new_model, cfg.device)
            results, answers = evaluate(gen, tok, eval_tasks, cfg.eval_framings, cfg)
            figures = {f: compare(prev.get(f), r, fams) for f, r in results.items()}
            atomic_write_json(sdir / "eval.json", {"model": new_model, "results": results, "figures": figures,
                                                   "answers": answers,
                                                   "data": stats})
            atomic_write_json(done, {"model": new_model})
        ev = json.loads((sdir / "eval.json").read_text())
        model = json.loads(done.read_text())["model"]
        rows += [{"stage": family, "framing": f, **fig, "data": ev["data"]} for f, fig in ev["figures"].items()]
        prev = {**prev, **ev["results"]}
    summary = {"base_model": cfg.base_model or str(out / "base_model"), "final_model": model,
               "eval_tasks": len(eval_tasks), "rows": rows}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_table(rows))
    return summary


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per stage and framing, with Wilson CI and McNemar vs the previous stage."""
    lines = ["| stage | framing | accuracy | 95% CI | by family | vs previous (b/c, exact p) "
             "| data (solved/tasks, refs, pairs) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.get("mcnemar")
        mc = f"{m['b']}/{m['c']}, p={m['p_exact']:.3g}" if m else "-"
        d = r.get("data")
        dd = f"{d['tasks_solved']}/{d['tasks']}, {d['references_used']}, {d['pairs']}" if d else "-"
        fam = ", ".join(f"{k} {v:.2f}" for k, v in r.get("by_family", {}).items()) or "-"
        lines.append(f"| {r['stage']} | {r['framing']} | {r['accuracy']:.3f} ({r['k']}/{r['n']}) | "
                     f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {fam} | {mc} | {dd} |")
    return "\n".join(lines) + "\n"
