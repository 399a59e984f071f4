"""Padding-free batches: concatenate sequences into one row with restarting position ids.

transformers builds a block-diagonal causal mask from position ids that restart at 0
(`attention_mask=None`), so packed sequences never see each other and no compute goes to
padding. The LM head (often the biggest matmul) runs only on positions whose next token is
trained, through `logits_to_keep`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from charter.train.data import Seq
from charter.train.losses import IGNORE, token_logps


@dataclass
class Packed:
    input_ids: torch.Tensor     # [1, N]
    position_ids: torch.Tensor  # [1, N], restarting at 0 for each sequence
    keep: torch.Tensor          # [K] positions whose next token is trained
    targets: torch.Tensor       # [K] the token each kept position must predict
    segment: torch.Tensor       # [K] which sequence each kept position belongs to
    n_seqs: int

    def to(self, device) -> "Packed":
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.keep.to(device),
                      self.targets.to(device), self.segment.to(device), self.n_seqs)

    def per_seq(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per-kept-position values into one number per sequence."""
        out = torch.zeros(self.n_seqs, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.segment, values)

    def tokens_per_seq(self) -> torch.Tensor:
        return torch.bincount(self.segment, minlength=self.n_seqs)


def pack(seqs: Sequence[Seq]) -> Packed:
    ids, pos, shifted, seg = [], [], [], []
    for i, s in enumerate(seqs):
        ids.extend(s.input_ids)
        pos.extend(range(len(s)))
        shifted.extend(list(s.labels[1:]) + [IGNORE])  # position t predicts token t+1 of the SAME sequence
        seg.extend([i] * len(s))
    shifted_t = torch.tensor(shifted)
    keep = (shifted_t != IGNORE).nonzero().squeeze(-1)
    return Packed(torch.tensor([ids]), torch.tensor([pos]), keep, shifted_t[keep],
                  torch.tensor(seg)[keep], len(seqs))


def supports_logits_to_keep(model) -> bool:
    import inspect

    base = model
    while hasattr(base, "get_base_model") or hasattr(base, "module"):  # peft / DDP wrappers
        base = base.get_base_model() if hasattr(base, "get_base_model") else base.module
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def packed_token_logps(model, batch: Packed, keep_only: bool = True) -> torch.Tensor:
    """Log-prob of every trained token of the packed batch, shape [K]."""
    kwargs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    if keep_only:
        logits = model(**kwargs, logits_to_keep=batch.keep).logits[0]
    else:
        logits = model(**kwargs).logits[0, batch.keep]
    return token_logps(logits, batch.targets)


def check_packing(model, seqs: Sequence[Seq], keep_only: bool, atol: float = 1e-3) -> None:
    """Refuse architectures whose attention ignores packed position ids (they would attend across
    sequences silently): compare the packed log-probs with one-sequence-at-a-time."""
    with torch.no_grad():
        device = next(model.parameters()).device
        packed = packed_token_logps(model, pack(seqs).to(device), keep_only)
        single = torch.cat([packed_token_logps(model, pack([s]).to(device), keep_only) for s in seqs])
    err = (packed - single).abs().max().item() if len(single) else 0.0
    if err > atol:
        raise RuntimeError(f"this model's attention does not honour packed position ids (max log-prob error "
                           f"{err:.2e}); use attn_implementation 'sdpa', 'eager' or 'flash_attention_2'")
