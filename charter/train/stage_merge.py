"""The final model of a run: base + sum_i w_i * (delta of training stage i), exactly.

Each stage (DPO, then SFT trained on DPO's result) is either a LoRA adapter or full weights, in
any mix. Its *delta* is what it added to the model it started from:

- LoRA: `scale * B @ A` of its own adapter (`stage_adapter/` when the folder's top-level adapter
  folds the chain it was trained on);
- full weights: `W_trained - W_start`, where `W_start` is the model the stage loaded: the base
  for the first stage; for a later one, the previous full weights, or the base with the previous
  adapters folded in, rounded to float32 exactly as `load_model_and_tokenizer` does.

The sum is taken in float64 per tensor and cast once (float32 when any stage is full weights,
since full fine-tuning trains and saves float32; else the base's own dtype).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from charter.models import TRAIN_RECORD, adapter_deltas, is_adapter, local_folder, resolve_param_name
from charter.train.lora import save_merged


def own_adapter(trained: Path) -> Path:
    """The adapter holding only this stage's delta."""
    rec = trained / TRAIN_RECORD
    sub = json.loads(rec.read_text()).get("stage_adapter") if rec.exists() else None
    return trained / sub if sub else trained


def full_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def stage_delta(trained: Path, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{parameter: float64 delta} this stage added to `start` (its starting weights)."""
    if is_adapter(trained):
        adapter = own_adapter(trained)
        return {resolve_param_name(start, name, adapter): d for name, d in adapter_deltas(adapter).items()}
    weights = full_weights(trained)
    missing = sorted(set(start) - set(weights))
    if missing:
        raise ValueError(f"{trained}: full weights lack {missing[0]} (and {len(missing) - 1} more) of the base")
    return {k: weights[k].double() - start[k].double() for k in start}


def merge_stages(base: str | Path, stages: list[tuple[str | Path, float]], out_dir: str | Path) -> Path:
    """Write `base + sum_i w_i * delta_i` for stages trained one on top of the other, oldest first."""
    out_dir = Path(out_dir)
    full = any(not is_adapter(p) for p, _ in stages)
    model = AutoModelForCausalLM.from_pretrained(local_folder(base), dtype=torch.float32 if full else "auto",
                                                 use_safetensors=True)
    params = dict(model.named_parameters())
    start = {k: p.detach().float() for k, p in params.items()}  # what the first stage loaded
    total: dict[str, torch.Tensor] = {}
    for path, weight in stages:
        delta = stage_delta(Path(path), start)
        for k, d in delta.items():
            total[k] = total.get(k, 0) + float(weight) * d
        start = {k: (v.double() + delta[k]).float() if k in delta else v for k, v in start.items()}
    with torch.no_grad():
        for k, d in total.items():
            params[k].copy_((params[k].double() + d).to(params[k].dtype))
    last = Path(stages[-1][0])
    save_merged(model, last, out_dir, {
        "base": str(base),
        "formula": "W = W_base + sum_i weight_i * delta_i (float64, cast once); delta = LoRA scale*B@A "
                   "or W_trained - W_start",
        "stages": [{"path": str(p), "weight": float(w),
                    "kind": "lora" if is_adapter(p) else "full"} for p, w in stages],
        "adapters": [{"path": str(own_adapter(Path(p))), "weight": float(w)}
                     for p, w in stages if is_adapter(p)],
    })
    return out_dir

