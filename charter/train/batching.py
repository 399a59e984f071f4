"""Padding-free batches: sequences packed into rows, position ids restarting at 0 per sequence.

transformers builds a block-diagonal causal mask from position ids that restart at 0
(`attention_mask=None`), so packed sequences never see each other. Sequences are packed
first-fit-decreasing into rows as long as the longest sequence: almost no padding, and
attention stays ~ rows x row_len^2 instead of (all tokens)^2 for one giant row.

The LM head (often the biggest matmul) runs only on positions whose next token is trained:
a forward pre-hook on the output embedding hands it just those hidden states. The hook works
for any architecture with an output embedding, and through PEFT / DDP / FSDP wrappers.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from charter.train.data import Seq
from charter.train.losses import IGNORE, token_logps


@dataclass
class Packed:
    input_ids: torch.Tensor     # [R, L]
    position_ids: torch.Tensor  # [R, L], restarting at 0 for each sequence (and for the padding tail)
    keep: torch.Tensor          # [K] flat positions (into R*L) whose next token is trained
    targets: torch.Tensor       # [K] the token each kept position must predict
    segment: torch.Tensor       # [K] which input sequence each kept position belongs to
    n_seqs: int

    def to(self, device) -> "Packed":
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.keep.to(device),
                      self.targets.to(device), self.segment.to(device), self.n_seqs)

    def per_seq(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per-kept-position values into one number per sequence (input order)."""
        out = torch.zeros(self.n_seqs, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.segment, values)

    def input_order(self) -> torch.Tensor:
        """Permutation taking per-kept-position values from packed order (rows are filled
        longest-first) to input order: sequence 0's tokens, then sequence 1's, ..."""
        return torch.argsort(self.segment, stable=True)

    def tokens_per_seq(self) -> torch.Tensor:
        return torch.bincount(self.segment, minlength=self.n_seqs)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())


def _rows(lengths: list[int], cap: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row, each row's total length <= cap."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(cap - lengths[i])
    return rows


def pack(seqs: Sequence[Seq], row_len: int | None = None, pad_id: int = 0) -> Packed:
    """Pack into rows of `max(row_len, longest sequence)` tokens; `row_len=0` = one single row."""
    lengths = [len(s) for s in seqs]
    cap = sum(lengths) if row_len == 0 else max(max(lengths), row_len or 0)
    rows = _rows(lengths, cap)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    shifted = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            s, n = seqs[i], lengths[i]
            ids[r, at:at + n] = torch.tensor(s.input_ids)
            pos[r, at:at + n] = torch.arange(n)
            shifted[r, at:at + n - 1] = torch.tensor(s.labels[1:])  # position t predicts token t+1, same seq
            seg[r, at:at + n] = i
            at += n
        pos[r, at:] = torch.arange(width - at)  # padding tail: its own segment, never trained
    flat = shifted.view(-1)
    keep = (flat != IGNORE).nonzero().squeeze(-1)
    return Packed(ids, pos, keep, flat[keep], seg.view(-1)[keep], len(seqs))


@contextmanager
def _head_only_at(model, keep: torch.Tensor):
    """Feed the output embedding only the hidden states at `keep` (flattened over rows)."""
    from accelerate.utils import extract_model_from_parallel

    head = extract_model_from_parallel(model).get_output_embeddings()

    def pre_hook(module, args):
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1])[keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def packed_token_logps(model, batch: Packed, keep_only: bool = True) -> torch.Tensor:
    """Log-prob of every trained token of the packed batch, shape [K]."""
    kwargs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    if keep_only:
        with _head_only_at(model, batch.keep):
            logits = model(**kwargs).logits[0]
    else:
        logits = model(**kwargs).logits
        logits = logits.reshape(-1, logits.shape[-1])[batch.keep]
    return token_logps(logits, batch.targets)


def supports_head_hook(model) -> bool:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model).get_output_embeddings() is not None


def check_packing(model, seqs: Sequence[Seq], keep_only: bool, atol: float = 1e-3) -> None:
    """Refuse architectures whose attention ignores packed position ids (they would attend across
    sequences silently): compare the packed log-probs with one-sequence-at-a-time."""
    with torch.no_grad():
        device = next(model.parameters()).device
        batch = pack(seqs, row_len=0).to(device)  # all in one row: the case that needs the mask
        packed = batch.per_seq(packed_token_logps(model, batch, keep_only))
        single = torch.stack([packed_token_logps(model, pack([s]).to(device), keep_only).sum() for s in seqs])
    err = (packed - single).abs().max().item() if len(single) else 0.0
    if err > atol:
        raise RuntimeError(f"this model's attention does not honour packed position ids (max log-prob error "
                           f"{err:.2e}); use attn_implementation 'sdpa', 'eager' or 'flash_attention_2'")
