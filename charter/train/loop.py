"""The training loop SFT and DPO share: data order, accumulation, optimiser, checkpoints, export.

It runs under `accelerate`, so `accelerate launch` (DDP, FSDP, DeepSpeed) needs no code change.
We do not hand the data to a DataLoader: every process builds the same deterministic order
(seeded permutation per epoch), takes the same *global window* of examples per optimiser step
(batch_size x grad_accum x processes), and trains on its own slice. Because every process
knows the whole window, each loss can be divided by the window's global count (tokens for SFT,
pairs for DPO) with no communication, and the gradient after DDP's averaging equals the
single-process one. Resuming needs only the step number: the data position follows from it.

A task (SFT, DPO) supplies `micro_loss(model, items, window) -> (loss, sums)`; `sums` are
additive statistics that are all-reduced and turned into the logged metrics by `metrics(sums)`.
A task that carries state between steps (the on-policy ones) also has `checkpoint_state()` and
`restore_state(tensors, meta)`, saved and restored with every checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available, set_seed
from pydantic import Field, model_validator
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from charter.config import Config
from charter.data.jsonl import atomic_write_json
from charter.models import (ADAPTER_CONFIG, TRAIN_RECORD, ChatTemplateFile, load_tokenizer, merged_state,
                            read_adapter_config, resolve_model)
from charter.train.checkpoint import checkpoint_dirs, load_checkpoint, resume_key, save_checkpoint
from charter.train.lora import LoraSettings, apply_lora, merge_adapters, save_combined_adapter
from charter.train.tracking import ReportTo, start_tracking

METRICS = "metrics.jsonl"  # one JSON row per logged step, in the output folder


class TrainConfig(Config):
    """Fields shared by SFT and DPO. `batch_size` is per process and per micro-batch."""

    model: str                                  # HF folder or Hub id, a merged Charter output, or a LoRA adapter folder
    data: str                                   # JSONL
    output_dir: str
    lora: LoraSettings | None = None            # None = full fine-tuning
    merge: bool = False                         # LoRA only: also write output_dir/merged (full weights)
    lr: float = Field(5e-5, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int = Field(0, ge=0)             # > 0 overrides epochs
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int | None = Field(1024, ge=2)
    chat: bool | None = None                    # None = the tokenizer's template if any; False = plain frame (base model)
    chat_template: ChatTemplateFile = None      # a Jinja file used as the tokenizer's template (saved with the model)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float | None = 1.0
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: plain SGD, whose update is exactly -lr * gradient
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    shuffle: bool = True
    save_steps: int = Field(0, ge=0)            # 0 = only the final model
    save_total_limit: int = Field(2, ge=1)
    resume: bool = True                         # continue from output_dir/checkpoints/ if present
    logging_steps: int = Field(1, ge=1)
    attn_implementation: str = "sdpa"
    keep_logits_only_for_targets: bool = True   # run the LM head only where a token is trained
    gradient_checkpointing: bool = False        # recompute layers in backward: less memory, ~1/3 more compute
    cpu_threads: int | None = Field(None, ge=1)  # torch.set_num_threads; 1 is ~10x faster on a busy shared CPU
    report_to: ReportTo = []                    # tensorboard, wandb, trackio (optional extras; see train/tracking.py)

    @model_validator(mode="after")
    def _check(self):
        if self.merge and self.lora is None:
            raise ValueError("merge: only meaningful with lora")
        return self


class Task(Protocol):
    items: Sequence[Any]

    def window_norm(self, window: Sequence[Any]) -> dict[str, float]: ...

    def micro_loss(self, model, items: Sequence[Any], norm: dict[str, float], world: int): ...

    def metrics(self, sums: dict[str, float]) -> dict[str, float]: ...


# ----------------------------------------------------------------------------- model loading


def load_model_and_tokenizer(cfg: TrainConfig):
    """Base weights in fp32 (bf16 runs under autocast), earlier adapters folded in exactly, then
    a fresh LoRA if asked. Returns (model, tokenizer, base name as given, folded_adapters)."""
    ref = resolve_model(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch.float32, use_safetensors=True,
                                                 attn_implementation=cfg.attn_implementation)
    if ref.adapters:
        merged_state(model, [(a, 1.0) for a in ref.adapters])
    if cfg.gradient_checkpointing:  # non-reentrant: no input-grad trick needed under LoRA
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tokenizer = load_tokenizer(ref.tokenizer, cfg.chat_template)
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    return model, tokenizer, ref.base_name, list(ref.adapters)


# ----------------------------------------------------------------------------- schedule


def lr_lambda(total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> Callable[[int], float]:
    """Linear warmup then cosine to `min_lr_ratio` (the same formula as transformers'
    `cosine_with_min_lr`, so runs compare step for step with TRL)."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)) * (1 - min_lr_ratio) + min_lr_ratio)

    return f


def make_optimizer(model, cfg: TrainConfig):
    """AdamW (or plain SGD); no weight decay on biases and norm weights (1-D tensors), as
    transformers does. SGD exists for checks that need weights linear in the gradients."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.adam_betas),
                             eps=cfg.adam_eps)


def window_order(n: int, global_batch: int, seed: int, shuffle: bool, world: int) -> Callable[[int], list[int]]:
    """step -> the dataset indices of that step's window (epochs follow each other)."""
    per_epoch = n // global_batch if world > 1 else math.ceil(n / global_batch)
    if per_epoch == 0:
        raise ValueError(f"{n} examples < one global batch of {global_batch}")
    cache: dict[int, list[int]] = {}

    def order(step: int) -> list[int]:
        epoch, k = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()
            g = torch.Generator().manual_seed(seed + epoch)
            cache[epoch] = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
        return cache[epoch][k * global_batch:(k + 1) * global_batch]

    order.per_epoch = per_epoch  # type: ignore[attr-defined]
    return order


# ----------------------------------------------------------------------------- the loop


def _cpu_only() -> bool:
    """No accelerator device: tell accelerate, so a multi-process launch (torchrun / accelerate
    launch) on CPU uses gloo instead of silently running N independent single-process jobs."""
    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mps_available())


def _reduce_sums(accelerator, sums: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="sum")
    return dict(zip(keys, t.tolist()))


@dataclass
class Session:
    """Everything a training run holds between steps, built once by `start_session`."""

    accelerator: Any
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    params: list
    task: Task
    order: Callable[[int], list[int]]
    total: int                      # optimiser steps in the whole run
    base: str                       # the base model as named (what the exported record says)
    folded: list[Path]              # adapters folded into the base before training
    deepspeed: bool                 # DeepSpeed owns gradient accumulation


def start_session(cfg: TrainConfig, task_factory: Callable[[Any, Any, Any], Task],
                  load: Callable | None = None) -> Session:
    """Accelerator, seeded model and task, data order, optimiser and schedule, all prepared.
    `load` replaces `load_model_and_tokenizer` (a reward model's head, PPO's value model)."""
    # DeepSpeed owns accumulation (its engine steps at its own boundary and divides the loss by
    # its accumulation count); everywhere else Charter accumulates and accelerate must not divide.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no", cpu=_cpu_only(),
                              gradient_accumulation_steps=cfg.grad_accum if deepspeed else 1)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    set_seed(cfg.seed)
    model, tokenizer, base, folded = (load or load_model_and_tokenizer)(cfg)
    model.to(accelerator.device)
    task = task_factory(model, tokenizer, accelerator)
    world = accelerator.num_processes
    order = window_order(len(task.items), cfg.batch_size * cfg.grad_accum * world, cfg.seed, cfg.shuffle, world)
    total = cfg.max_steps or cfg.epochs * order.per_epoch  # type: ignore[attr-defined]
    optimizer = make_optimizer(model, cfg)
    scheduler = LambdaLR(optimizer, lr_lambda(total, cfg.warmup_ratio, cfg.min_lr_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    return Session(accelerator, model, tokenizer, optimizer, scheduler, params, task, order, total, base, folded,
                   deepspeed)


def resume_and_open_metrics(s: Session, cfg: TrainConfig, out: Path, kind: str) -> int:
    """The step to start from (a saved checkpoint's, or 0); the main process writes the config and
    keeps only the metric rows logged up to that step."""
    start, ckpts = 0, checkpoint_dirs(out) if cfg.resume else []
    if ckpts:
        start = load_checkpoint(s.accelerator, s.model, s.optimizer, s.scheduler, ckpts[-1], resume_key(cfg), s.task)
    if s.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / f"{kind}_config.yaml")
        metrics, kept = out / METRICS, []
        if start and metrics.exists():  # drop rows logged after the checkpoint we resume from
            kept = [l for l in metrics.read_text().splitlines() if l and json.loads(l)["step"] <= start]
        metrics.write_text("".join(l + "\n" for l in kept))
    return start


def optimizer_step(s: Session, cfg: TrainConfig, step: int) -> tuple[dict[str, float], float, float]:
    """One optimiser step over the step's global window: this process's slice in micro-batches,
    gradients synced on the last one. Returns (all-reduced sums, grad norm, learning rate used)."""
    acc, world = s.accelerator, s.accelerator.num_processes
    window = [s.task.items[i] for i in s.order(step)]
    norm = s.task.window_norm(window)
    per_rank = math.ceil(len(window) / world)
    mine = window[acc.process_index * per_rank:(acc.process_index + 1) * per_rank]
    micros = [mine[i:i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
    sums: dict[str, float] = {}
    for k, items in enumerate(micros):
        sync = k == len(micros) - 1 or s.deepspeed  # ZeRO-2/3 refuse no_sync
        with (nullcontext() if sync else acc.no_sync(s.model)), acc.autocast():
            loss, part = s.task.micro_loss(s.model, items, norm, world)
        acc.backward(loss * acc.gradient_accumulation_steps)  # undo accelerate's division (see start_session)
        for key, v in part.items():
            sums[key] = sums.get(key, 0.0) + v
    grad_norm = (acc.clip_grad_norm_(s.params, cfg.max_grad_norm) if cfg.max_grad_norm
                 else torch.norm(torch.stack([p.grad.detach().norm() for p in s.params if p.grad is not None])))
    grad_norm = float("nan") if grad_norm is None else float(grad_norm)  # None: DeepSpeed clips itself
    lr = s.scheduler.get_last_lr()[0]
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return _reduce_sums(acc, sums), grad_norm, lr


def run(cfg: TrainConfig, task_factory: Callable[[Any, Any, Any], Task], kind: str,
        on_step: Callable[[int, dict], None] | None = None, load: Callable | None = None,
        export: Callable | None = None) -> Path:
    """Train and export. `task_factory(model, tokenizer, accelerator)` builds the task once the
    model exists (DPO needs it for reference log-probs). `on_step(step, metrics)` is a test hook.
    `load`/`export` replace `load_model_and_tokenizer`/`export_model` (see `start_session`, `finish`)."""
    out = Path(cfg.output_dir)
    s = start_session(cfg, task_factory, load)
    start = resume_and_open_metrics(s, cfg, out, kind)
    acc = s.accelerator
    tracker = start_tracking(cfg.report_to, out, cfg.model_dump(mode="json"), kind, acc.is_main_process)
    s.model.train()
    bar = tqdm(total=s.total, initial=start, desc=kind, disable=not acc.is_local_main_process, dynamic_ncols=True)
    t0, tokens_seen = time.time(), 0
    for step in range(start, s.total):
        sums, grad_norm, lr = optimizer_step(s, cfg, step)
        tokens_seen += sums.get("tokens", 0.0)
        row = {"step": step + 1, "epoch": round((step + 1) / s.order.per_epoch, 4),  # type: ignore[attr-defined]
               **s.task.metrics(sums), "grad_norm": grad_norm, "learning_rate": lr,
               "tokens_per_s": round(tokens_seen / max(1e-9, time.time() - t0), 1)}
        if acc.is_main_process and ((step + 1) % cfg.logging_steps == 0 or step + 1 == s.total):
            with (out / METRICS).open("a") as f:
                f.write(json.dumps(row) + "\n")
            tracker.log(row, step + 1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        bar.update(1)
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < s.total:
            save_checkpoint(acc, s.model, s.optimizer, s.scheduler, out, step + 1, cfg.save_total_limit,
                            resume_key(cfg), s.task)
        if on_step is not None:
            on_step(step + 1, row)
    bar.close()
    tracker.finish()
    finish(s, cfg, out, kind, export)
    return out


def finish(s: Session, cfg: TrainConfig, out: Path, kind: str, export: Callable | None = None) -> None:
    """Every process waits; the main one exports the model (`export`, default `export_model`) and
    writes the training record."""
    s.accelerator.wait_for_everyone()
    if s.accelerator.is_main_process:
        exported = (export or export_model)(s.accelerator.unwrap_model(s.model), s.tokenizer, out, cfg, s.base, s.folded)
        atomic_write_json(out / TRAIN_RECORD, {
            "kind": kind, "done": True, "steps": s.total, "base_model": str(s.base), **exported,
            "lora": cfg.lora is not None, "config_hash": cfg.hash(), "torch": torch.__version__})
    s.accelerator.wait_for_everyone()


STAGE_ADAPTER = "stage_adapter"  # subfolder: this stage's own LoRA delta, when trained on other adapters


def export_model(model, tokenizer, out: Path, cfg: TrainConfig, base: str, folded: list[Path]) -> dict:
    """Full FT: safetensors model + tokenizer (any transformers user can load it). LoRA: an adapter
    on the original base + tokenizer, and with `merge` a folded copy. A LoRA trained on top of
    other adapters (SFT on a DPO adapter) is exported self-contained: the folder's adapter is the
    exact combination of the whole chain (`save_combined_adapter`), and this stage's own delta
    goes to `STAGE_ADAPTER/` (its config names the adapter it was trained on) for weighted merges.
    Returns what the training record must add."""
    tokenizer.save_pretrained(out)
    if cfg.lora is None:
        model.save_pretrained(out, safe_serialization=True)
        return {"base_adapters": [str(a) for a in folded]}
    record: dict = {"base_adapters": []}
    if folded:
        _save_adapter(model, out / STAGE_ADAPTER, folded[-1])
        save_combined_adapter(model, folded, out)
        record.update(trained_on=[str(a) for a in folded], stage_adapter=STAGE_ADAPTER)
    else:
        model.save_pretrained(out, safe_serialization=True)
    _name_base(out, base)
    if cfg.merge:
        merge_adapters(base, [(out, 1.0)], out / "merged")
    return record


def _save_adapter(model, folder: Path, base: str | Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    _name_base(folder, base)


def _name_base(folder: Path, base: str | Path) -> None:
    info = read_adapter_config(folder)
    info["base_model_name_or_path"] = str(base)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(info, indent=2))
