"""Base-model bootstrapping: from a pretrained-only model to instruction following, in stages.

Stages (SPEC §5): explicit instructions -> questions -> generation tasks -> evaluation
tasks -> revision tasks -> constitutional. For each stage, the *previous* stage's model
answers that stage's tasks through completion-style few-shot prompts
(`Instruction: ... Response: ... END`), a program checks every answer (verifiable.py),
passing answers become SFT rows and (pass, fail) pairs become DPO pairs, and the model is
trained SFT -> DPO with Charter's training core. `data_source` says where the chosen answers come
from: the model's own samples that pass (`self`, rejection sampling), those with the task's scripted
reference standing in where none passes (`self+reference`), or the references only (`reference`);
the rejected side is always a failing sample of the same task. The summary counts each source.

Every prompt given to a model here is plain text; `assert_no_template` refuses any that
carries chat-template markers or special tokens, because a template leaking into a base
model's input silently changes what is being measured.

Evaluation: a fixed held-out task set (distinct instructions, none of which appears among the
training tasks or the few-shot examples), greedy decoding, scored by the same checks, in
several framings; each stage is compared with the previous one on the same tasks
(McNemar on the paired outcomes, Wilson CI on each accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from charter.backends.base import GenerationRequest, SamplingParams
from charter.backends.hf import HFGenerator
from charter.cai.base_lm import BaseLMConfig, build_base_lm
from charter.cai.verifiable import FAMILIES, Task, check_response, make_tasks
from charter.chat import FRAME_STOPS, fallback_render
from charter.chat_render import TemplateLeakError, assert_no_template, template_markers  # noqa: F401 - re-exported
from charter.config import Config, ConfigError
from charter.data.jsonl import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from charter.evaluate.stats import mcnemar_paired, proportion
from charter.train.dpo import DPOConfig, train_dpo
from charter.train.sft import SFTConfig, train_sft

STAGES = ["instructions", "questions", "generation", "evaluation", "revision", "constitutional"]
Framing = Literal["raw", "question", "instruction", "fewshot", "hh"]
DataSource = Literal["self", "self+reference", "reference"]
EVAL_SEED = 10_000


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
    data_source: DataSource = "self+reference"  # where chosen answers come from (module docstring)
    per_task: int = Field(1, ge=1)  # at most this many SFT rows and DPO pairs per task
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
# tasks: held out by construction


def draw_tasks(family: str, n: int, seed: int, exclude: frozenset[str] = frozenset(),
               distinct: bool = False) -> list[Task]:
    """n tasks of `family` whose instructions are not in `exclude` (and differ from each other when
    `distinct`), in the deterministic order of `make_tasks(family, ..., seed)`.

    Why: the task families are small template spaces (a few hundred instructions), so independent
    draws for training and evaluation share most of their instructions; the held-out set is only
    held out if training never sees its instructions."""
    kept, seen = [], set()
    for t in make_tasks(family, max(20 * n, 2000), seed):
        if t.instruction in exclude or (distinct and t.instruction in seen):
            continue
        kept.append(t)
        seen.add(t.instruction)
        if len(kept) == n:
            return kept
    outside = f" outside the {len(exclude)} held-out instructions" if exclude else ""
    raise ConfigError(f"bootstrap: {n} {'distinct ' if distinct else ''}'{family}' tasks asked for, but only "
                      f"{len(kept)} exist{outside}; ask for fewer")


def heldout_tasks(cfg: BootstrapConfig) -> list[Task]:
    """`eval_tasks` distinct tasks per evaluation family, fixed by EVAL_SEED."""
    return [t for f in cfg.eval_families for t in draw_tasks(f, cfg.eval_tasks, EVAL_SEED, distinct=True)]


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(gen, tokenizer, tasks: list[Task], framings: list[str], cfg: BootstrapConfig
             ) -> tuple[dict[str, list[bool]], dict[str, list[str]]]:
    """Per framing, per task: did the greedy answer pass every check? Also returns the answers.
    The few-shot examples are never one of the evaluated tasks (their answers would be in the prompt)."""
    shots = [(t.instruction, t.reference) for t in
             draw_tasks("instructions", cfg.fewshot, 9999, frozenset(t.instruction for t in tasks))]
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed)
    passed, answers = {}, {}
    for fr in framings:
        replies = complete(gen, tokenizer, [framed(fr, t.instruction, cfg.frame, shots) for t in tasks], params)
        answers[fr] = [r[0] for r in replies]
        passed[fr] = [check_response(t, r[0])[0] for t, r in zip(tasks, replies)]
    return passed, answers


def compare(prev: list[bool] | None, cur: list[bool], families: list[str]) -> dict:
    """Accuracy with Wilson CI (overall and per task family) and McNemar against `prev` (same tasks)."""
    p = proportion(sum(cur), len(cur))
    by = {f: sum(c for c, g in zip(cur, families) if g == f) / families.count(f) for f in dict.fromkeys(families)}
    return {"accuracy": p.value, "ci": [p.lo, p.hi], "k": p.k, "n": p.n, "by_family": by,
            "mcnemar": mcnemar_paired(prev, cur).to_dict() if prev is not None else None}


# ---------------------------------------------------------------------------------------------
# stages


def sort_samples(task: Task, outs: list[str]) -> tuple[list[str], list[str]]:
    """(distinct passing samples, distinct failing samples) in sampling order; empty ones are
    neither, since an empty answer is no example of anything."""
    good, bad = [], []
    for o in dict.fromkeys(o for o in outs if o):
        (good if check_response(task, o)[0] else bad).append(o)
    return good, bad


def choose(task: Task, good: list[str], bad: list[str], source: DataSource, per_task: int
           ) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """One task's SFT answers and DPO (chosen, rejected) pairs, each tagged with where the chosen
    answer came from ("self" or "reference"). Rejected answers are always the model's own failures."""
    if source == "reference" or (source == "self+reference" and not good):
        chosen = [(task.reference, "reference")]
    else:
        chosen = [(g, "self") for g in good[:per_task]]
    pairs = []
    for i, rejected in enumerate(bad[:per_task] if chosen else []):
        answer, origin = chosen[i % len(chosen)]  # fewer passing than failing: a passing one pairs again
        pairs.append((answer, rejected, origin))
    return chosen, pairs


def stage_data(gen, tokenizer, family: str, cfg: BootstrapConfig, stage_seed: int,
               exclude: frozenset[str] = frozenset()) -> tuple[list, list, dict]:
    """The previous model answers this stage's tasks few-shot (`samples` each); the checks sort the
    answers, and `data_source` picks the chosen side. Tasks whose instruction is in `exclude`
    (the held-out set) are never drawn."""
    tasks = draw_tasks(family, cfg.train_tasks, stage_seed, exclude)
    shots = [(t.instruction, t.reference) for t in draw_tasks(family, cfg.fewshot, stage_seed + 5000, exclude)]
    params = cfg.sampling.model_copy(update={"n": cfg.samples, "seed": cfg.seed + stage_seed})
    samples = complete(gen, tokenizer, [framed("fewshot", t.instruction, cfg.frame, shots) for t in tasks], params)
    sft, pairs = [], []
    stats = {"source": cfg.data_source, "tasks": len(tasks), "samples": 0, "passing_samples": 0, "tasks_solved": 0,
             "self_rows": 0, "references_used": 0, "self_pairs": 0}
    for t, outs in zip(tasks, samples):
        good, bad = sort_samples(t, outs)
        stats["samples"] += len(outs)
        stats["passing_samples"] += sum(check_response(t, o)[0] for o in outs if o)
        stats["tasks_solved"] += bool(good)
        rows, task_pairs = choose(t, good, bad, cfg.data_source, cfg.per_task)
        prompt = [{"role": "user", "content": t.instruction}]
        for answer, origin in rows:
            stats["self_rows" if origin == "self" else "references_used"] += 1
            sft.append({"messages": prompt + [{"role": "assistant", "content": answer}],
                        "meta": {"task": t.id, "source": origin}})
        for chosen, rejected, origin in task_pairs:
            stats["self_pairs"] += origin == "self"
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}],
                          "meta": {"task": t.id, "source": origin}})
    stats["sft_rows"], stats["pairs"] = len(sft), len(pairs)
    return sft, pairs, stats


def train_stage(model: str, sft_path: Path, pairs_path: Path, n_pairs: int, stage_dir: Path,
                cfg: BootstrapConfig) -> str:
    """SFT from the previous model, then DPO from the SFT model (training core, full fine-tuning)."""
    out = str(train_sft(SFTConfig(**{**cfg.sft, "model": model, "data": str(sft_path),
                                    "output_dir": str(stage_dir / "sft"), "seed": cfg.seed})))
    if n_pairs >= cfg.min_pairs:
        out = str(train_dpo(DPOConfig(**{**cfg.dpo, "model": out, "data": str(pairs_path),
                                        "output_dir": str(stage_dir / "dpo"), "seed": cfg.seed})))
    return out


def _load(model: str, device: str | None = None):
    gen = HFGenerator(model, batch_size=32, device=device, chat=False)
    return gen, gen.tokenizer


def write_stage_data(model: str, k: int, sdir: Path, cfg: BootstrapConfig, held_out: frozenset[str]
                     ) -> tuple[int, dict]:
    """Stage k's SFT rows and pairs from `model`, written under `sdir`: (number of pairs, data stats)."""
    family = cfg.stages[k - 1]
    gen, tok = _load(model, cfg.device)
    sft, pairs, stats = stage_data(gen, tok, family, cfg, stage_seed=k, exclude=held_out)
    if cfg.replay:  # earlier stages' SFT rows too, so a stage does not unlearn the ones before
        earlier = [(f, sdir.parent / f"stage_{j}_{f}" / "sft.jsonl") for j, f in enumerate(cfg.stages[:k - 1], 1)]
        sft += [r for f, path in earlier for r in read_jsonl(path) if r["meta"].get("task", "").startswith(f)]
        stats["sft_rows"] = len(sft)
    if not sft:
        raise ConfigError(f"{sdir}: no training data: no sample passed its checks ({stats['tasks_solved']}/"
                          f"{stats['tasks']} tasks solved, data_source={cfg.data_source}); raise `samples` "
                          "or use data_source=self+reference")
    write_jsonl(sdir / "sft.jsonl", sft)
    write_jsonl(sdir / "pairs.jsonl", pairs)
    return len(pairs), stats


def run_bootstrap(cfg: BootstrapConfig) -> dict:
    """Baseline, then each stage (data from the previous model -> SFT -> DPO -> eval). Resumable per stage."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    model = cfg.base_model
    if model is None:
        model = str(build_base_lm(cfg.base_lm, out / "base_model"))
    eval_tasks = heldout_tasks(cfg)
    held_out = frozenset(t.instruction for t in eval_tasks)
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
            n_pairs, stats = write_stage_data(model, k, sdir, cfg, held_out)
            new_model = train_stage(model, sdir / "sft.jsonl", sdir / "pairs.jsonl", n_pairs, sdir, cfg)
            gen, tok = _load(new_model, cfg.device)
            results, answers = evaluate(gen, tok, eval_tasks, cfg.eval_framings, cfg)
            figures = {f: compare(prev.get(f), r, fams) for f, r in results.items()}
            atomic_write_json(sdir / "eval.json", {"model": new_model, "results": results, "figures": figures,
                                                   "answers": answers, "data": stats})
            atomic_write_json(done, {"model": new_model})
        ev = json.loads((sdir / "eval.json").read_text())
        model = json.loads(done.read_text())["model"]
        rows += [{"stage": family, "framing": f, **fig, "data": ev["data"]} for f, fig in ev["figures"].items()]
        prev = {**prev, **ev["results"]}
    summary = {"base_model": cfg.base_model or str(out / "base_model"), "final_model": model,
               "data_source": cfg.data_source, "eval_tasks": len(eval_tasks), "rows": rows}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", f"Training data source: {cfg.data_source}; {len(eval_tasks)} held-out "
                                          f"tasks.\n\n" + summary_table(rows))
    return summary


def data_cell(d: dict | None) -> str:
    """A stage's data: tasks its own samples solved, SFT rows by source, pairs (own chosen)."""
    if not d:
        return "-"
    own = f" ({d['self_pairs']} own)" if "self_pairs" in d else ""
    return (f"{d.get('source', 'self+reference')}: {d['tasks_solved']}/{d['tasks']} solved, "
            f"{d.get('self_rows', d['tasks_solved'])} own + {d['references_used']} ref rows, {d['pairs']} pairs{own}")


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per stage and framing, with Wilson CI and McNemar vs the previous stage."""
    lines = ["| stage | framing | accuracy | 95% CI | by family | vs previous (b/c, exact p) | data |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.get("mcnemar")
        mc = f"{m['b']}/{m['c']}, p={m['p_exact']:.3g}" if m else "-"
        dd = data_cell(r.get("data"))
        fam = ", ".join(f"{k} {v:.2f}" for k, v in r.get("by_family", {}).items()) or "-"
        lines.append(f"| {r['stage']} | {r['framing']} | {r['accuracy']:.3f} ({r['k']}/{r['n']}) | "
                     f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {fam} | {mc} | {dd} |")
    return "\n".join(lines) + "\n"
