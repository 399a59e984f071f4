"""Supervised fine-tuning: loss on assistant tokens only, token mean over the accumulation window."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from charter.chat import EncodedChat
from charter.train.batching import check_packing, pack, packed_token_logps, supports_head_hook
from charter.train.data import read_sft
from charter.train.losses import sft_loss
from charter.train.loop import TrainConfig, run


class SFTConfig(TrainConfig):
    """SFT settings; see `TrainConfig` for the shared fields."""


class SFTTask:
    def __init__(self, items: list[EncodedChat], keep_only: bool):
        self.items, self.keep_only = items, keep_only

    def window_norm(self, window: Sequence[EncodedChat]) -> dict[str, float]:
        # tokens trained in the whole window, across processes: the loss denominator
        return {"tokens": float(sum(s.n_trainable for s in window))}

    def micro_loss(self, model, items: Sequence[EncodedChat], norm: dict[str, float], world: int):
        device = next(model.parameters()).device
        tok = packed_token_logps(model, pack(items).to(device), self.keep_only)
        # x world: DDP averages gradients over processes, the window mean needs their sum
        loss = sft_loss(tok, norm["tokens"]) * world
        return loss, {"nll_sum": -tok.detach().sum().item(), "tokens": float(tok.numel()),
                      "seqs": float(len(items))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["nll_sum"] / max(1.0, sums["tokens"]), "num_tokens": sums["tokens"]}


def sft_task(model, items: list[EncodedChat], keep_logits_only_for_targets: bool) -> SFTTask:
    """The task for `items` on this model, once packing is known to be safe for its architecture."""
    keep_only = keep_logits_only_for_targets and supports_head_hook(model)
    check_packing(model, items[:3], keep_only)
    return SFTTask(items, keep_only)


def build_sft_task(cfg: SFTConfig) -> Callable:
    def factory(model, tokenizer, accelerator):
        items, stats = read_sft(cfg.data, tokenizer, cfg.max_length, cfg.chat)
        if (stats.dropped_no_trainable or stats.truncated) and accelerator.is_main_process:
            print(f"sft: {stats.truncated} rows truncated, {stats.dropped_no_trainable} dropped with no "
                  f"trainable token left (max_length={cfg.max_length})")
        return sft_task(model, items, cfg.keep_logits_only_for_targets)

    return factory


def train_sft(cfg: SFTConfig, on_step: Callable | None = None) -> Path:
    """Train and return the output folder (full weights, or a LoRA adapter noting its base)."""
    return run(cfg, build_sft_task(cfg), "sft", on_step)
