"""PPO in its RLHF form (SPEC §8): policy, value model, frozen reward, frozen reference.

Every `ppo_epochs` optimiser steps the policy answers a window of prompts once (batched through
the `hf` backend); the rollout is then scored and held:
- the score comes from any `charter.train.rewards` source (a frozen reward model by default),
  after the format guard;
- per-token reward = -beta (log pi_old - log pi_ref), plus the score on the reply's last token;
- GAE over the reply tokens with the value model's estimates, advantages whitened.
With `guided_share` > 0 that share of each rollout's prompts is answered with the constitution as
system prompt and trained as a reply to the plain prompt, as in GRPO (the toy base answers in
character about once in 512 samples, so pure on-policy rollouts carry no persona signal); guided
replies carry no KL penalty.
The next `ppo_epochs` steps each take one optimiser step on that rollout with the clipped
policy loss and `vf_coef x` the clipped value loss, so from the second step on the ratio
pi/pi_old moves off 1 and clipping acts. pi_old and the old values are the first step's own
forwards, detached: the same weights, so a separate no-gradient forward would only repeat them.
beta is fixed, or adaptive with `kl_target`. A checkpoint holds the rollout in use and beta, so a
run killed between two steps on one rollout resumes on it.

The value model is the policy's architecture with a per-token scalar head
(`AutoModelForTokenClassification`, one label), trained fully; it is saved to `output_dir/value`.
The reference is the adapter-disabled policy under LoRA, else a frozen copy. Single process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from pydantic import Field, model_validator
from transformers import AutoModelForTokenClassification

from charter.models import resolve_model
from charter.train.batching import Packed, pack, packed_token_logps
from charter.train.grpo import GuidedConfig, frozen_reference, guided_rollouts, load_constitution_text, reference_logps
from charter.train.loop import export_model, load_model_and_tokenizer, run
from charter.train.rewards import RewardConfig, RewardSource, guarded
from charter.train.rl_losses import AdaptiveKL, gae, ppo_policy_loss, ppo_value_loss, whiten
from charter.train.rollout import Rollout, SamplingTask, read_prompts, sample_rollouts, user_text

VALUE_DIR = "value"


class PPOConfig(GuidedConfig):
    reward: RewardConfig = RewardConfig(kind="rm")
    kl_coef: float = Field(0.05, ge=0)          # beta; the starting value when adaptive
    kl_target: float | None = None              # adaptive KL: per-reply KL to aim at
    kl_horizon: int = Field(10000, ge=1)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0)
    value_clip: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    ppo_epochs: int = Field(4, ge=1)            # optimiser steps per rollout

    @model_validator(mode="after")
    def _one_micro_batch(self):
        if self.grad_accum != 1:
            raise ValueError("grad_accum: PPO takes one optimiser step per pass over a rollout; use batch_size")
        return self


class PolicyWithValue(torch.nn.Module):
    """Both trained models in one module, so the loop's optimiser, clipping and checkpoints cover
    them together."""
    def __init__(self, policy, value):
        super().__init__()
        self.policy, self.value = policy, value


def load_policy_and_value(cfg: PPOConfig):
    """`load` hook: the policy as every trainer loads it, and a value model on the same base."""
    policy, tokenizer, base, folded = load_model_and_tokenizer(cfg)
    value = AutoModelForTokenClassification.from_pretrained(resolve_model(cfg.model).base, num_labels=1,
                                                            dtype=torch.float32, use_safetensors=True,
                                                            attn_implementation=cfg.attn_implementation)
    return PolicyWithValue(policy, value), tokenizer, base, folded


def export_policy_and_value(model, tokenizer, out: Path, cfg: PPOConfig, base: str, folded: list) -> dict:
    """`export` hook: the policy exactly as SFT/DPO export it; the value model in `out/value`."""
    record = export_model(model.policy, tokenizer, out, cfg, base, folded)
    model.value.save_pretrained(out / VALUE_DIR, safe_serialization=True)
    return record


def token_values(value_model, batch: Packed):
    """V at each position that predicts a trained token, [K] in packed order."""
    out = value_model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    return out[..., 0].reshape(-1)[batch.keep].float()


@dataclass
class Rollouts:
    batch: Packed
    old_logps: torch.Tensor   # [K] packed order, fixed for the ppo_epochs steps
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict


_PACKED = ("input_ids", "position_ids", "keep", "targets", "segment")
_HELD = ("old_logps", "old_values", "advantages", "returns")


def rollout_tensors(ro: Rollouts) -> dict[str, torch.Tensor]:
    """A rollout as named tensors (for a checkpoint's safetensors file)."""
    return {**{f"batch.{k}": getattr(ro.batch, k) for k in _PACKED}, **{k: getattr(ro, k) for k in _HELD}}


def rollout_from(tensors: dict[str, torch.Tensor], meta: dict) -> Rollouts:
    """Inverse of `rollout_tensors`, with the stats and sequence count kept in `meta`."""
    batch = Packed(*(tensors[f"batch.{k}"] for k in _PACKED), meta["n_seqs"])
    return Rollouts(batch, *(tensors[k] for k in _HELD), meta["rollout_stats"])


def per_sequence(flat, batch: Packed):
    """[K] packed-order values -> ([B, T] padded in input order, 0/1 mask)."""
    counts = batch.tokens_per_seq().tolist()
    rows = torch.split(flat[batch.input_order()], counts)
    out = flat.new_zeros(len(rows), max(counts))
    mask = torch.zeros_like(out)
    for i, r in enumerate(rows):
        out[i, :len(r)], mask[i, :len(r)] = r, 1
    return out, mask


def to_packed(padded, mask, batch: Packed):
    """Inverse of `per_sequence`."""
    flat = padded[mask.bool()]
    out = flat.new_empty(flat.shape)
    out[batch.input_order()] = flat
    return out


def shaped_rewards(scores, logps, ref_logps, mask, beta: float):
    """-beta (log pi - log pi_ref) per token, plus the score on each reply's last token."""
    rewards = -beta * (logps - ref_logps) * mask
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


class PPOTask(SamplingTask):
    def __init__(self, items, cfg: PPOConfig, tokenizer, reward, ref_model, system: str | None = None):
        self.items, self.cfg, self.tokenizer, self.reward = items, cfg, tokenizer, reward
        self.ref_model, self.calls, self.rollout, self.system = ref_model, 0, None, system
        self.kl = AdaptiveKL(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    def window_norm(self, window: Sequence) -> dict[str, float]:
        return {"replies": float(len(window))}

    def sample(self, model, items) -> tuple[list[Rollout], list[bool]]:
        """One reply per prompt, and whether it is the policy's own sample: the window's last
        `guided_share` of prompts are answered with the constitution as system prompt (GRPO's
        `guided_rollouts`) and trained as replies to the plain prompt."""
        cfg, items = self.cfg, list(items)
        seed, k = cfg.seed * 1_000_003 + self.calls, round(len(items) * cfg.guided_share)
        plain = items[:len(items) - k]
        rolls = sample_rollouts(model.policy, self.tokenizer, plain, cfg.sampling(seed), cfg.chat,
                                cfg.rollout_batch_size) if plain else []
        if k:
            rolls += guided_rollouts(model.policy, self.tokenizer, items[len(plain):], self.system,
                                     cfg.sampling(seed + 500_001), cfg)
        return rolls, [i < len(plain) for i in range(len(items))]

    def scores(self, rolls: list[Rollout]) -> list[float]:
        """The reward source's scores, after the format guard."""
        replies = [r.reply for r in rolls]
        return guarded(self.reward.rewards([user_text(r.messages) for r in rolls], replies), replies,
                       [r.finished for r in rolls], self.cfg.reward)

    def hold_rollout(self, model, batch: Packed, scores: list[float], on_policy: list[bool], logps,
                     values) -> Rollouts:
        """The rollout held for `ppo_epochs` steps: the old log-probs and values, and GAE's
        advantages and returns over the KL-shaped rewards."""
        cfg = self.cfg
        ref = reference_logps(model.policy, self.ref_model, batch, True).float()
        (lp, mask), ref_lp, v = per_sequence(logps, batch), per_sequence(ref, batch)[0], per_sequence(values, batch)[0]
        # the KL penalty only on the policy's own samples, as in GRPO: on a guided reply the log-ratio
        # to the reference measures the constitution's pull, not the policy's drift
        on = torch.tensor(on_policy, device=lp.device)
        ref_lp = torch.where(on[:, None], ref_lp, lp)
        score_t = torch.tensor(scores, dtype=lp.dtype, device=lp.device)
        beta = self.kl.value
        adv, ret = gae(shaped_rewards(score_t, lp, ref_lp, mask, beta), v * mask, cfg.gamma, cfg.lam)
        adv = whiten(adv, mask) * mask
        kl = ((lp - ref_lp) * mask).sum(1)[on].mean().item() if on.any() else 0.0
        self.kl.update(kl, len(scores))
        stats = {"objective/kl": kl, "objective/scores": score_t.mean().item(),
                 "objective/rlhf_reward": score_t.mean().item() - beta * kl, "objective/beta": beta,
                 "completions/mean_length": mask.sum(1).mean().item()}
        stats.update({f"rewards/{k}": v / len(scores) for k, v in self.reward.counts.items()})
        for k in self.reward.counts:
            self.reward.counts[k] = 0.0
        return Rollouts(batch, logps, values, to_packed(adv, mask, batch), to_packed(ret, mask, batch), stats)

    def micro_loss(self, model, items, norm: dict[str, float], world: int):
        cfg = self.cfg
        fresh = self.calls % cfg.ppo_epochs == 0
        if fresh:
            rolls, on_policy = self.sample(model, items)
            batch = pack([r.seq for r in rolls]).to(next(model.parameters()).device)
        else:
            batch = self.rollout.batch
        self.calls += 1
        logps = packed_token_logps(model.policy, batch).float()
        values = token_values(model.value, batch)
        if fresh:  # the old policy is the one being trained: this forward, detached, is its log-probs
            self.rollout = self.hold_rollout(model, batch, self.scores(rolls), on_policy, logps.detach(),
                                            values.detach())
        ro = self.rollout
        ones = torch.ones_like(ro.old_logps)
        pg, clipfrac = ppo_policy_loss(logps, ro.old_logps, ro.advantages, ones, cfg.clip)
        vf, vclip = ppo_value_loss(values, ro.old_values, ro.returns, ones, cfg.value_clip)
        approx_kl = 0.5 * ((logps - ro.old_logps).detach() ** 2).mean()
        sums = {"n": 1.0, "loss/policy_avg": pg.item(), "loss/value_avg": vf.item(),
                "policy/clipfrac_avg": clipfrac.item(), "val/clipfrac_avg": vclip.item(),
                "policy/approxkl_avg": approx_kl.item(), "tokens": float(ro.batch.n_tokens), **ro.stats}
        return (pg + cfg.vf_coef * vf) * world, sums

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The rollout being reused (a run killed between its epochs resumes on it) and beta."""
        tensors, meta = super().checkpoint_state()
        meta["beta"] = self.kl.value
        if self.rollout is not None:
            tensors.update(rollout_tensors(self.rollout))
            meta.update(rollout_stats=self.rollout.stats, n_seqs=self.rollout.batch.n_seqs)
        return tensors, meta

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        super().restore_state(tensors, meta)
        self.kl.value = meta["beta"]
        if "n_seqs" in meta:
            self.rollout = rollout_from(tensors, meta)

    def metrics(self, s: dict[str, float]) -> dict[str, float]:
        n = max(1.0, s["n"])
        m = {k: v / n for k, v in s.items() if k not in ("n", "tokens")}
        m["loss"] = m["loss/policy_avg"] + self.cfg.vf_coef * m["loss/value_avg"]
        m["num_tokens"] = s["tokens"]
        return m


def build_ppo_task(cfg: PPOConfig, reward: RewardSource) -> Callable:
    def factory(model, tokenizer, accelerator):
        if accelerator.num_processes > 1:
            raise ValueError("ppo: single process only for now (the value and policy share one wrapper module)")
        return PPOTask(read_prompts(cfg.data), cfg, tokenizer, reward, frozen_reference(model.policy, cfg),
                       load_constitution_text(cfg.constitution, cfg.assistant_name))

    return factory


def train_ppo(cfg: PPOConfig, reward: RewardSource, on_step: Callable | None = None) -> Path:
    """Train against `reward` (`charter.rewards.reward_for(cfg)`); the policy is exported like
    SFT/DPO output, the value model to `output_dir/value`."""
    return run(cfg, build_ppo_task(cfg, reward), "ppo", on_step, load=load_policy_and_value,
               export=export_policy_and_value)
