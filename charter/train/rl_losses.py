"""Loss maths of the on-policy methods (PPO, GRPO/RLOO, self-distillation) as pure functions (SPEC §8).

Like `losses.py`, nothing here knows about models or batches: each formula is checked against a
hand computation or TRL's own function. Per-token tensors come with a 0/1 `mask` of the same
shape (completion tokens), and every mean below is over masked tokens only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries (unbiased variance, as TRL's `masked_whiten`);
    `shift_mean=False` adds the mean back (PPO whitens rewards that way)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [B, T] (padding must carry reward 0 and value 0):
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum_k (gamma lam)^k delta_{t+k}.
    Returns (advantages, returns = advantages + values)."""
    T = rewards.shape[-1]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(T)):
        next_value = values[..., t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = delta + gamma * lam * running
        adv[..., t] = running
    return adv, adv + values


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: mean of max(-A rho, -A clip(rho, 1 - e, 1 + e)), rho = pi / pi_old.
    Returns (loss, clip fraction: share of tokens where the clipped term was the larger)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).to(logps.dtype), mask).detach()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean of max((V - R)^2, (clip(V, V_old +- c) - R)^2). Returns (loss, clip fraction)."""
    clipped_values = torch.clamp(values, old_values - clip, old_values + clip)
    a, b = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(a, b), mask), masked_mean((b > a).to(values.dtype), mask).detach()


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str = "grpo",
                     eps: float = 1e-4) -> torch.Tensor:
    """Per-completion advantages from rewards laid out prompt by prompt ([N * G], G = group_size).

    - grpo: (r - group mean) / (group std + eps), std unbiased (as TRL)
    - drgrpo: r - group mean (Dr. GRPO drops the std, which overweights near-unanimous groups)
    - rloo: r - mean of the OTHER G - 1 completions (leave-one-out baseline)
    """
    r = rewards.view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    if kind == "grpo":
        adv = (r - mean) / (r.std(dim=1, keepdim=True) + eps)
    elif kind == "drgrpo":
        adv = r - mean
    elif kind == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs group_size >= 2")
        adv = r - (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    else:
        raise ValueError(f"advantage kind {kind!r}: expected grpo, drgrpo or rloo")
    return adv.reshape(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimator k3 = exp(q) - q - 1 with q = log pi_ref - log pi:
    unbiased on samples from pi and never negative (Schulman's "approximating KL")."""
    q = ref_logps - logps
    return torch.exp(q) - q - 1


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    beta: float = 1.0) -> torch.Tensor:
    """Per-position divergence over the vocabulary ([K, V] logits -> [K]), TRL's convention (GKD):
    beta * KL(T || M) + (1 - beta) * KL(S || M) with M = (1 - beta) S + beta T;
    beta = 0 is the forward KL(T || S), beta = 1 the reverse KL(S || T) (mode seeking)."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits: softmax in fp32
    s = F.log_softmax(student_logits.to(dtype), dim=-1)
    t = F.log_softmax(teacher_logits.to(dtype), dim=-1)
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    b = torch.tensor(beta, dtype=s.dtype, device=s.device)
    m = torch.logsumexp(torch.stack([s + torch.log1p(-b), t + torch.log(b)]), dim=0)
    return b * (t.exp() * (t - m)).sum(-1) + (1 - b) * (s.exp() * (s - m)).sum(-1)


class AdaptiveKL:
    """Ziegler et al.'s KL controller: nudge beta so the measured KL tracks `target`
    (error clipped to +-20%, full correction over `horizon` samples). `target=None` keeps beta fixed."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_samples: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.value *= 1 + error * n_samples / self.horizon
        return self.value
