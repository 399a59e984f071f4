"""Training checkpoints as safetensors + JSON: no pickle is written or read.

A checkpoint `checkpoints/step-N/` holds what resuming needs to continue bit-exactly:
- `model.safetensors`: the trainable parameters (all of them for full fine-tuning, the adapter
  under LoRA; frozen weights are reloaded from the model folder);
- `optimizer-rank<r>.safetensors` + `optimizer-rank<r>.json`: each process's optimiser state
  tensors, and its param groups and scalars;
- `rng-rank<r>.safetensors` + `rng-rank<r>.json`: each process's torch (CPU and accelerator),
  NumPy and Python random states;
- `task-rank<r>.safetensors` + `task-rank<r>.json`: what the task carries between steps, for tasks
  that have any (`checkpoint_state`: on-policy tasks' sampling counter, EMA teacher, reused rollout);
- `state.json`: step, scheduler state, and the resume key (config + data hash).
It is written to a temp folder and renamed, so a kill never leaves half a one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from charter.config import ConfigError
from charter.data.jsonl import atomic_write_json, stable_id
from charter.data.sources import data_hash

# Fields that change how a run is logged, saved or carried out, not what it computes: they may
# differ on resume (gradient checkpointing recomputes activations; the gradients are the same).
OPERATIONAL_FIELDS = ("resume", "save_steps", "save_total_limit", "logging_steps", "cpu_threads", "gradient_checkpointing",
                      "report_to")


def resume_key(cfg) -> str:
    """What a checkpoint must have been trained with: every computing config field and the data."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL_FIELDS}
    return stable_id(fields, data_hash(cfg.data))


def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.exists():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-") and (d / "state.json").exists()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


def _check_supported(accelerator) -> None:
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError("save_steps: checkpoints are not supported under DeepSpeed (its optimiser state has no "
                          "safetensors form); use DDP/FSDP, or save_steps: 0")


def _sharded(accelerator) -> bool:
    """FSDP holds a different slice of the parameters on each process; DDP replicates them."""
    return accelerator.distributed_type == DistributedType.FSDP


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_files(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    return tensors, {"python": random.getstate(), "numpy": [kind, int(pos), int(has_gauss), float(gauss)]}


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


def _task_files(task) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = task.checkpoint_state()
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, meta


def save_checkpoint(accelerator, model, optimizer, scheduler, out: Path, step: int, limit: int, key: str,
                    task=None) -> None:
    """Write `checkpoints/step-<step>/` (see the module docstring) and keep the newest `limit`."""
    _check_supported(accelerator)
    root = out / "checkpoints"
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights = {n: p.detach().cpu().contiguous() for n, p in _trainable(accelerator.unwrap_model(model)).items()}
    if _sharded(accelerator):
        save_file(weights, str(tmp / f"model-rank{rank}.safetensors"))
    elif accelerator.is_main_process:
        save_file(weights, str(tmp / "model.safetensors"))
    files = [("optimizer", _optimizer_files(optimizer)), ("rng", _rng_files())]
    if hasattr(task, "checkpoint_state"):
        files.append(("task", _task_files(task)))
    for name, (tensors, meta) in files:
        save_file(tensors, str(tmp / f"{name}-rank{rank}.safetensors"))
        atomic_write_json(tmp / f"{name}-rank{rank}.json", meta)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "state.json", {"step": step, "resume_key": key, "processes": accelerator.num_processes,
                                               "scheduler": scheduler.state_dict()})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, model, optimizer, scheduler, ckpt: Path, key: str, task=None) -> int:
    """Restore a checkpoint written by `save_checkpoint` into the prepared objects; returns its step.
    A checkpoint from another config, other data or another process count is refused."""
    state = json.loads((ckpt / "state.json").read_text())
    if state.get("resume_key") != key:
        raise ConfigError(f"{ckpt}: saved with a different config or data file; resume with the same ones, "
                          f"or set resume: false (or a new output_dir) to start over")
    if state.get("processes") != accelerator.num_processes:
        raise ConfigError(f"{ckpt}: saved by {state.get('processes')} processes, resuming with "
                          f"{accelerator.num_processes}; use the same number")
    rank = accelerator.process_index
    weights = load_file(str(ckpt / (f"model-rank{rank}.safetensors" if _sharded(accelerator) else "model.safetensors")))
    params = _trainable(accelerator.unwrap_model(model))
    if set(weights) != set(params):
        raise ConfigError(f"{ckpt}: its trainable parameters do not match this model's")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    meta = json.loads((ckpt / f"optimizer-rank{rank}.json").read_text())
    optimizer.load_state_dict(_optimizer_state(load_file(str(ckpt / f"optimizer-rank{rank}.safetensors")), meta))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng(load_file(str(ckpt / f"rng-rank{rank}.safetensors")), json.loads((ckpt / f"rng-rank{rank}.json").read_text()))
    if hasattr(task, "restore_state"):
        if not (ckpt / f"task-rank{rank}.json").exists():
            raise ConfigError(f"{ckpt}: holds no training-task state (written by an older Charter); set resume: "
                              f"false (or a new output_dir) to start over")
        task.restore_state(load_file(str(ckpt / f"task-rank{rank}.safetensors"), device=str(accelerator.device)),
                           json.loads((ckpt / f"task-rank{rank}.json").read_text()))
    return int(state["step"])
