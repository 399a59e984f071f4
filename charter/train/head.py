"""Log-probs of the target tokens through the LM head, a chunk of positions at a time.

With a large vocabulary the logits are the biggest tensor of a step: 1000 trained positions x
gemma-3's 262,144 tokens is 1 GiB in fp32, and autograd keeps two or three such tensors
(logits, log-softmax, their gradient) alive at once. Here the logits of `CHUNK_ELEMENTS` at a
time are reduced to one log-prob per position; the softmax probabilities of the first
`KEEP_ELEMENTS` are kept for the backward pass and the rest are recomputed there, so memory is
bounded whatever the vocabulary and small-vocabulary models pay no recomputation.
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 25  # logits computed at once: 128 MiB in fp32 (smaller chunks make slower matmuls)
KEEP_ELEMENTS = 1 << 26   # probabilities kept from forward to backward: 256 MiB in fp32


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """hidden @ weight.T + bias, at least in fp32 (`hidden` and `weight` already in the compute dtype)."""
    z = hidden @ weight.t()
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return z if bias is None else z.add_(bias.to(z.dtype))


class _HeadLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, keep_chunks: int):
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            logps, log_norms, kept = [], [], []
            for i, (h, t) in enumerate(zip(hidden.split(chunk), targets.split(chunk))):
                z = _logits(h.to(dtype), w, bias)
                log_norm = torch.logsumexp(z, dim=-1)
                logps.append(z.gather(1, t[:, None]).squeeze(1) - log_norm)
                log_norms.append(log_norm)
                if i < keep_chunks and any(ctx.needs_input_grad[:3]):
                    kept.append(z.sub_(log_norm[:, None]).exp_())
        ctx.save_for_backward(hidden, weight, bias, targets, torch.cat(log_norms))
        ctx.dtype, ctx.chunk, ctx.kept = dtype, chunk, kept
        return torch.cat(logps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        hidden, weight, bias, targets, log_norm = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=log_norm.dtype) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=log_norm.dtype) if need_b else None
        w = weight.to(ctx.dtype)
        for i, start in enumerate(range(0, hidden.shape[0], ctx.chunk)):
            at = slice(start, start + ctx.chunk)
            h = hidden[at].to(ctx.dtype)
            p = kept[i] if i < len(kept) else _logits(h, w, bias).sub_(log_norm[at, None]).exp_()
            # d log p(target) / d logits = onehot(target) - softmax, scaled by the incoming gradient
            g = p.mul_(-grad[at, None])
            g[torch.arange(len(g), device=g.device), targets[at]] += grad[at]
            if grad_b is not None:
                grad_b += g.sum(0)
            g = g.to(ctx.dtype)
            if grad_h is not None:
                grad_h[at] = g @ w
            if grad_w is not None:
                grad_w += (g.t() @ h).to(grad_w.dtype)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def head_token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     targets: torch.Tensor) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[target] per row of `hidden` [K, H], shape [K]."""
    chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _HeadLogps.apply(hidden, weight, bias, targets, chunk, KEEP_ELEMENTS // (chunk * weight.shape[0]))
