"""Loss maths as small pure functions on tensors (SPEC §4).

Nothing here knows about models, batches or devices, so every formula can be checked
against a hand computation. Log-probs of a completion are SUMMED over its tokens (the
DPO paper's sequence log-likelihood); IPO alone uses the per-token average.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charter.chat import IGNORE_INDEX

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each label under `logits` (same shape as labels), 0 where label == -100.

    `logits[..., i, :]` must already be the prediction for `labels[..., i]` (no shift here:
    callers that gather only the trained positions have aligned them already).
    """
    # cross_entropy is fused (no full log_softmax tensor kept) and gives 0 at ignored labels
    flat = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return -flat.view(labels.shape)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM convention (labels aligned with input_ids): shift by one, then per row
    return (sum of completion-token log-probs, number of completion tokens)."""
    labels = labels[..., 1:]
    per_tok = token_logps(logits[..., :-1, :], labels)
    return per_tok.sum(-1), (labels != IGNORE_INDEX).sum(-1)


@dataclass
class DPOLossOutput:
    losses: torch.Tensor            # per pair
    chosen_rewards: torch.Tensor    # beta * (logpi(c) - logpiref(c)), detached
    rejected_rewards: torch.Tensor  # beta * (logpi(r) - logpiref(r)), detached


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             label_prob: torch.Tensor | None = None,
             chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> DPOLossOutput:
    """Per-pair DPO losses from summed sequence log-probs.

    - sigmoid: -(1-e) log s(b D) - e log s(-b D)   (e = label_smoothing, "conservative DPO")
    - robust:  (-(1-e) log s(b D) + e log s(-b D)) / (1 - 2e)   (unbiased under label noise)
    - hinge:   relu(1 - b D)
    - ipo:     (D_avg - 1/(2b))^2 with per-token averaged log-ratios (needs token counts)
    `label_prob` (AI-feedback soft label, P(chosen preferred)) replaces the hard target
    for sigmoid: BCE on the margin, -(p log s(b D) + (1-p) log s(-b D)).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: expected one of {LOSS_TYPES}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        p = (1.0 - label_smoothing) if label_prob is None else label_prob.to(delta.dtype)
        losses = -p * F.logsigmoid(beta * delta) - (1 - p) * F.logsigmoid(-beta * delta)
    elif loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
        e = label_smoothing
        losses = (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (1 - 2 * e)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # ipo
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs chosen_tokens and rejected_tokens (per-token averaged log-ratios)")
        avg = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    return DPOLossOutput(losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())


def dpo_metrics(out: DPOLossOutput) -> dict[str, float]:
    """TRL-named reward metrics; accuracy uses strict > so ties count as wrong."""
    c, r = out.chosen_rewards, out.rejected_rewards
    return {"rewards/chosen": c.mean().item(), "rewards/rejected": r.mean().item(),
            "rewards/accuracies": (c > r).float().mean().item(), "rewards/margins": (c - r).mean().item()}


def nll_loss(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-pair negative log-likelihood of the chosen completion, per token (the NLL term)."""
    return -chosen_logps / chosen_tokens.clamp(min=1)


def squared_kl(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
               mask: torch.Tensor, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Mean over completion tokens of (log pi - log pi_ref)^2: a cheap, always >= 0 KL surrogate.

    `normalizer` replaces the local token count, so micro-batches can divide by the count of
    the whole accumulation window (then their sum is the window mean).
    """
    mask = mask.to(policy_token_logps.dtype)
    diff = (policy_token_logps - ref_token_logps) * mask
    denom = mask.sum().clamp(min=1) if normalizer is None else normalizer
    return (diff ** 2).sum() / denom


def sft_loss(token_logps_sum: torch.Tensor, window_tokens: int | torch.Tensor) -> torch.Tensor:
    """Token-sum of -log p divided by the trained tokens in the WHOLE accumulation window.

    Dividing each micro-batch by the window's count (not its own) makes the accumulated
    gradient equal to one big batch's token mean, whatever batch size x accumulation.
    """
    return -token_logps_sum.sum() / window_tokens


# ----------------------------------------------------------------------------- reference-free and normalised


def length_normalized_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                               ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                               chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
                               beta: float) -> DPOLossOutput:
    """Sigmoid DPO on MEAN completion log-probs: each side's log-ratio is divided by its length,
    so a shorter reply gains nothing from being short (thinking models learn otherwise)."""
    nc, nr = chosen_tokens.clamp(min=1), rejected_tokens.clamp(min=1)
    return dpo_loss(policy_chosen / nc, policy_rejected / nr, ref_chosen / nc, ref_rejected / nr, beta)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor,
              lam: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO per pair: NLL(chosen) + lam * -log s(log odds(c) - log odds(r)), with
    odds(y) = p / (1 - p) and p = exp(mean token log-prob). Returns (losses, log odds ratio)."""
    log_odds = (chosen_mean_logps - rejected_mean_logps) - (log1mexp(chosen_mean_logps)
                                                            - log1mexp(rejected_mean_logps))
    return -chosen_mean_logps - lam * F.logsigmoid(log_odds), log_odds.detach()


def simpo_loss(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor,
               beta: float = 2.0, gamma: float = 1.0) -> torch.Tensor:
    """SimPO per pair: -log s(beta * mean logp(c) - beta * mean logp(r) - gamma); no reference."""
    return -F.logsigmoid(beta * (chosen_mean_logps - rejected_mean_logps) - gamma)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | float = 0.0, center_coef: float = 0.0,
                       label_prob: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-model loss per pair: -log s(r_c - r_r - margin) + center_coef * (r_c + r_r)^2.

    `label_prob` (soft AI-feedback label, P(chosen preferred)) makes it the binary cross-entropy
    -(p log s(d) + (1 - p) log s(-d)); p = 1 is the hard loss. The centring term pins the
    rewards' mean near 0 (their scale is otherwise free)."""
    d = chosen_rewards - rejected_rewards - margin
    if label_prob is None:
        losses = -F.logsigmoid(d)
    else:
        p = label_prob.to(d.dtype)
        losses = -p * F.logsigmoid(d) - (1 - p) * F.logsigmoid(-d)
    return losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
