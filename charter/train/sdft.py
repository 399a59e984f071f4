"""On-policy self-distillation with the constitution as privileged context (SPEC §8).

The student samples replies to the plain prompt. The teacher is the same network, frozen (the
adapter-disabled base under LoRA, else a frozen copy) or an EMA of the student, reading the SAME
reply with the constitution as its system prompt. At every reply token the loss is a divergence
between the two next-token distributions over the whole vocabulary (`generalized_jsd`: beta 1
is the reverse KL(student || teacher), the default; beta 0 the forward KL). This is context
distillation on the student's own distribution: no pair filtering and no teacher text.

Only the reply positions go through the LM head (a forward pre-hook picks them), so the logits
held are [reply tokens x vocabulary], twice (student and teacher).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from accelerate.utils import extract_model_from_parallel
from pydantic import Field

from charter.train.batching import Packed, pack
from charter.train.grpo import OnPolicyConfig, frozen_reference, load_constitution_text
from charter.train.loop import run
from charter.train.rl_losses import generalized_jsd
from charter.train.rollout import SamplingTask, read_prompts, reply_sequence, sample_rollouts, with_system


class SDFTConfig(OnPolicyConfig):
    constitution: str                          # the teacher's privileged context (its system prompt)
    beta: float = Field(1.0, ge=0, le=1)       # generalised JSD; 1 = reverse KL, 0 = forward KL
    teacher: Literal["base", "ema"] = "base"
    ema_decay: float = Field(0.99, ge=0, lt=1)
    samples_per_prompt: int = Field(1, ge=1)


def reply_logits(model, batch: Packed):
    """Logits at the positions that predict a trained token, [K, V] in packed order."""
    head = extract_model_from_parallel(model).get_output_embeddings()

    def only_kept(module, args):
        return (args[0].reshape(-1, args[0].shape[-1])[batch.keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(only_kept)
    try:
        return model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
    finally:
        handle.remove()


class SDFTTask(SamplingTask):
    def __init__(self, items: list[list[dict]], cfg: SDFTConfig, tokenizer, system: str, teacher_model):
        self.items, self.cfg, self.tokenizer, self.system = items, cfg, tokenizer, system
        self.teacher_model, self.calls = teacher_model, 0

    def window_norm(self, window: Sequence) -> dict[str, float]:
        return {"replies": float(len(window) * self.cfg.samples_per_prompt)}

    def _teacher_logits(self, model, batch: Packed):
        with torch.no_grad():
            if self.teacher_model is not None:
                return reply_logits(self.teacher_model, batch)
            with extract_model_from_parallel(model).disable_adapter():
                return reply_logits(model, batch)

    def _update_ema(self, model) -> None:
        with torch.no_grad():
            for t, s in zip(self.teacher_model.parameters(), model.parameters()):
                t.lerp_(s.detach(), 1 - self.cfg.ema_decay)

    def micro_loss(self, model, items, norm: dict[str, float], world: int):
        cfg = self.cfg
        if cfg.teacher == "ema" and self.calls:
            self._update_ema(model)
        self.calls += 1
        rolls = sample_rollouts(model, self.tokenizer, list(items),
                                cfg.sampling(cfg.seed * 1_000_003 + self.calls, cfg.samples_per_prompt),
                                cfg.chat, cfg.rollout_batch_size)
        device = next(model.parameters()).device
        student = pack([r.seq for r in rolls]).to(device)
        teacher = pack([reply_sequence(self.tokenizer, with_system(r.messages, self.system), r.reply_ids, cfg.chat)
                        for r in rolls]).to(device)  # the very same reply tokens after the constitution
        s = reply_logits(model, student)[student.input_order()]
        t = self._teacher_logits(model, teacher)[teacher.input_order()]
        div = generalized_jsd(s, t, cfg.beta)
        seg = student.segment[student.input_order()]
        n_tok = student.tokens_per_seq().clamp(min=1)
        per_reply = div.new_zeros(len(rolls)).index_add(0, seg, div) / n_tok
        sums = {"replies": float(len(rolls)), "loss_sum": per_reply.detach().sum().item(),
                "len_sum": float(n_tok.sum()), "cut_sum": float(sum(not r.finished for r in rolls)),
                "tokens": float(student.n_tokens)}
        return per_reply.sum() / norm["replies"] * world, sums

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """An EMA teacher's weights too: it follows the student, so it cannot be rebuilt on resume."""
        tensors, meta = super().checkpoint_state()
        if self.cfg.teacher == "ema":
            tensors.update({f"teacher.{n}": p for n, p in self.teacher_model.named_parameters()})
        return tensors, meta

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        super().restore_state(tensors, meta)
        if self.cfg.teacher == "ema":
            with torch.no_grad():
                for n, p in self.teacher_model.named_parameters():
                    p.copy_(tensors[f"teacher.{n}"])

    def metrics(self, s: dict[str, float]) -> dict[str, float]:
        n = max(1.0, s["replies"])
        return {"loss": s["loss_sum"] / n, "completions/mean_length": s["len_sum"] / n,
                "completions/clipped_ratio": s["cut_sum"] / n, "num_tokens": s["tokens"]}


def build_sdft_task(cfg: SDFTConfig) -> Callable:
    def factory(model, tokenizer, accelerator):
        system = load_constitution_text(cfg.constitution, cfg.assistant_name)
        if cfg.teacher == "ema":
            teacher = copy.deepcopy(model).eval()
            teacher.requires_grad_(False)
        else:
            teacher = frozen_reference(model, cfg)
        return SDFTTask(read_prompts(cfg.data), cfg, tokenizer, system, teacher)

    return factory


def train_sdft(cfg: SDFTConfig, on_step: Callable | None = None) -> Path:
    """Train and return the output folder (full weights, or a LoRA adapter noting its base)."""
    return run(cfg, build_sdft_task(cfg), "sdft", on_step)
