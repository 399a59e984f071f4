"""LoRA through PEFT, and exact merging of one or several adapters into full weights.

A LoRA adapter adds `scale * B @ A` to each targeted weight (`scale = alpha / r`, or
`alpha / sqrt(r)` with rsLoRA). Merging is therefore plain arithmetic:

    W_merged = W_base + sum_i w_i * scale_i * (B_i @ A_i)

`merge_adapters` computes exactly that, per tensor, in float64, and casts once to the base's
dtype. (The reference implementation's "linear" mode went through PEFT's
`add_weighted_adapter`, which concatenates/rescales A and B and is not this sum; we do not.)

Stage chaining. Charter trains SFT *on top of the DPO-merged model*, so the SFT adapter's base
is `base + dpo_delta`. Because merging is linear, these two give the same weights (up to one
rounding to the storage dtype):

    merge_adapters(base,       [(dpo, 1.0), (sft, w)])
    merge_adapters(dpo_merged, [(sft, w)])

The paper's recipe (DPO 1.0 + SFT 0.25) is the first form. A DPO weight other than 1.0 applies
the SFT delta to a model it was not trained against: allowed, but it is the user's choice.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from charter.cards import write_merge_card
from charter.config import Config
from charter.data.jsonl import atomic_write_json, file_hash
from charter.models import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGE_RECORD, TRAIN_RECORD, adapter_scale, check_supported,
                            has_tokenizer, local_folder, lora_scale, merged_state, read_adapter_config, resolve_model)

class LoraSettings(Config):
    """LoRA hyperparameters. Defaults are the paper's (SPEC §4): r 64, alpha 128, dropout 0, all linear."""

    r: int = Field(64, gt=0)
    alpha: float = Field(128.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return lora_scale(self.r, self.alpha, self.use_rslora)


def linear_module_names(model) -> list[str]:
    """Leaf names of every linear layer except the LM head, e.g. q_proj ... down_proj for Llama.

    "Linear" means `nn.Linear` and transformers' `Conv1D` (GPT-2 style, stored transposed).
    Resolving "all-linear" ourselves (rather than trusting a per-architecture table) makes it
    correct for any architecture and visible in the saved adapter config.
    """
    if hasattr(model, "peft_config"):
        raise ValueError("linear_module_names: pass the base model, not one already wrapped by PEFT")
    head = model.get_output_embeddings()
    modules = [(name.rsplit(".", 1)[-1], mod) for name, mod in model.named_modules()]
    linears = {leaf for leaf, m in modules if isinstance(m, (nn.Linear, Conv1D)) and m is not head}
    # PEFT matches targets by leaf name, so a leaf shared with the head would wrap the head too
    leaves = linears - {leaf for leaf, m in modules if m is head}
    if not leaves:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers besides the LM head to put LoRA on")
    return sorted(leaves)


def apply_lora(model, settings: LoraSettings):
    """Wrap `model` in a PEFT LoRA model; only adapter weights are trainable."""
    targets = (linear_module_names(model) if settings.target_modules == "all-linear"
               else list(settings.target_modules))
    # Conv1D stores its weight as (in, out): PEFT must know, and so must merging (fan_in_fan_out)
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=targets, use_rslora=settings.use_rslora, bias="none",
                     fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


# ---------------------------------------------------------------------------------------------
# merging


def merge_adapters(base_path: str | Path, adapters: list[tuple[str | Path, float]],
                   out_dir: str | Path, dtype: str = "auto") -> Path:
    """Fold `base + sum_i w_i * scale_i * B_i @ A_i` into full weights and save a plain HF folder.

    The folder holds safetensors weights, the config and the tokenizer (from the base, else the
    first adapter), plus `charter_merge.json` recording what was merged. It is written to a temp
    folder and renamed, so a crash never leaves a half-written model.
    """
    if not adapters:
        raise ValueError("merge_adapters: give at least one (adapter_dir, weight)")
    out_dir = Path(out_dir)
    configs = [read_adapter_config(p) for p, _ in adapters]  # fail before loading the base
    _refuse_double_count([Path(p) for p, _ in adapters])
    for src in [Path(base_path), *(Path(p) for p, _ in adapters)]:  # the output folder is replaced as a whole
        if out_dir.resolve() in (src.resolve(), *src.resolve().parents):
            raise ValueError(f"output folder {out_dir} would replace the input {src}; pick another")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    base_dir = local_folder(base_path)  # a Hub id: its snapshot in the Hugging Face cache
    if not (base_dir / "config.json").exists():
        raise FileNotFoundError(f"{base_path}: not a model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype, use_safetensors=True)
    merged_state(model, adapters)
    tok_src = base_dir if has_tokenizer(base_dir) else Path(adapters[0][0])
    save_merged(model, tok_src, out_dir, {
        "base": str(base_path),
        "formula": "W = W_base + sum_i weight_i * scale_i * B_i @ A_i (float64, cast once)",
        "adapters": [{"path": str(p), "weight": float(w), "scale": adapter_scale(cfg),
                      "sha256": file_hash(Path(p) / ADAPTER_WEIGHTS)}
                     for (p, w), cfg in zip(adapters, configs)],
    })
    return out_dir


def _refuse_double_count(paths: list[Path]) -> None:
    """An adapter exported with its chain folded in (`trained_on`) already holds those adapters:
    merging it next to them would count them twice."""
    given = {p.resolve() for p in paths}
    for p in paths:
        rec = p / TRAIN_RECORD
        info = json.loads(rec.read_text()) if rec.exists() else {}
        again = [a for a in info.get("trained_on", []) if Path(a).resolve() in given]
        if again:
            raise ValueError(f"{p} already folds in {', '.join(again)}; to weight each stage give its own delta, "
                             f"{p / info['stage_adapter']}, instead")


def save_merged(model, tok_src: Path, out_dir: Path, record: dict) -> None:
    """Write a plain HF folder (safetensors, config, tokenizer from `tok_src` if it has one, and
    `charter_merge.json`) to a temp folder renamed into place, so a crash never leaves half a model."""
    tokenizer = AutoTokenizer.from_pretrained(tok_src) if has_tokenizer(tok_src) else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MERGE_RECORD, record)
        write_merge_card(tmp, record)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(adapter_dir: str | Path, out_dir: str | Path, base_path: str | Path | None = None,
           weight: float = 1.0, dtype: str = "auto") -> Path:
    """Merge one adapter into the model it was trained on.

    Without `base_path` that model is read from the adapter: a Charter training output records
    its base *and* the adapters folded into it before training (an SFT adapter trained on top of
    DPO), which are merged in at weight 1.0 first; a plain PEFT adapter names just its base.
    With `base_path`, only this adapter is merged into that base.
    """
    if base_path is not None:
        return merge_adapters(base_path, [(adapter_dir, weight)], out_dir, dtype=dtype)
    ref = resolve_model(adapter_dir)
    return merge_adapters(ref.base_name, [(a, 1.0) for a in ref.adapters[:-1]] + [(adapter_dir, weight)], out_dir,
                          dtype=dtype)


def save_combined_adapter(model, chain: list[Path], out_dir: Path) -> None:
    """Save `chain` (earlier adapters, oldest first) plus `model`'s trained adapter as ONE adapter
    on the original base, so plain PEFT / vLLM / Hub users get the whole chain.

    PEFT's `cat` combination stacks the A and B matrices (rank = sum of ranks, scale 1, each
    A pre-multiplied by its own scale), so its delta is exactly `sum_i scale_i * B_i @ A_i`.
    """
    names = [f"chain{i}" for i in range(len(chain))]
    for name, path in zip(names, chain):
        check_supported(read_adapter_config(path), Path(path))
        model.load_adapter(str(path), adapter_name=name)
    model.add_weighted_adapter(names + ["default"], [1.0] * (len(chain) + 1), "combined", combination_type="cat")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        model.save_pretrained(tmp, selected_adapters=["combined"], safe_serialization=True)
        for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.move(str(Path(tmp) / "combined" / f), str(out_dir / f))
    model.delete_adapter("combined")
    for name in names:
        model.delete_adapter(name)
