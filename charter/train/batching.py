"""Padding-free batches: sequences packed into rows, position ids restarting at 0 per sequence.

transformers builds a block-diagonal causal mask from position ids that restart at 0
(`attention_mask=None`), so packed sequences never see each other. Sequences are packed
first-fit-decreasing into rows as long as the longest sequence: almost no padding, and
attention stays ~ rows x row_len^2 instead of (all tokens)^2 for one giant row.

The LM head (often the biggest matmul) runs only on positions whose next token is trained:
a forward pre-hook on the output embedding hands it just those hidden states. The hook works
for any architecture with an output embedding, and through PEFT / DDP / FSDP wrappers. A plain
linear head goes further: its log-probs are computed in chunks of positions (`charter.train.head`),
so the [trained tokens x vocabulary] logits are never held whole.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from accelerate.utils import extract_model_from_parallel

from charter.chat import IGNORE_INDEX, EncodedChat
from charter.train.head import head_token_logps
from charter.train.losses import token_logps


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


def pack(seqs: Sequence[EncodedChat], row_len: int | None = None, pad_id: int = 0) -> Packed:
    """Pack into rows of `max(row_len, longest sequence)` tokens; `row_len=0` = one single row."""
    lengths = [len(s) for s in seqs]
    cap = sum(lengths) if row_len == 0 else max(max(lengths), row_len or 0)
    rows = _rows(lengths, cap)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    shifted = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
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
    keep = (flat != IGNORE_INDEX).nonzero().squeeze(-1)
    return Packed(ids, pos, keep, flat[keep], seg.view(-1)[keep], len(seqs))


# config fields by which some architectures cap or rescale the head's output (Gemma 2's soft-capping,
# Cohere's logit_scale, Granite's logits_scaling, ...): with one set, the head runs as the model's own module
_HEAD_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                        "logits_scaling")


def _plain_head(model, head) -> bool:
    """True when the model's logits are exactly `head(hidden)` for a plain linear head."""
    cfg = model.config.get_text_config()
    return type(head) is torch.nn.Linear and all(getattr(cfg, a, None) in (None, 1.0) for a in _HEAD_POSTPROCESSING)


@contextmanager
def _head_only_at(model, batch: Packed):
    """Give the output embedding only the hidden states at `batch.keep`. A plain linear head is
    then computed by `head_token_logps` (chunked: the logits never exist whole, which matters with
    a 262k vocabulary) and itself runs on no position; any other head runs on the kept states.
    Yields a dict that receives the chunked log-probs."""
    unwrapped = extract_model_from_parallel(model)
    head = unwrapped.get_output_embeddings()
    chunked, out = _plain_head(unwrapped, head), {}

    def pre_hook(module, args):
        hidden = args[0].reshape(-1, args[0].shape[-1])[batch.keep]
        if chunked:
            out["logps"] = head_token_logps(hidden, module.weight, module.bias, batch.targets)
            hidden = hidden[:0]
        return (hidden.unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield out
    finally:
        handle.remove()


def packed_token_logps(model, batch: Packed, keep_only: bool = True) -> torch.Tensor:
    """Log-prob of every trained token of the packed batch, shape [K]."""
    kwargs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    if not keep_only:
        logits = model(**kwargs).logits
        return token_logps(logits.reshape(-1, logits.shape[-1])[batch.keep], batch.targets)
    with _head_only_at(model, batch) as out:
        logits = model(**kwargs).logits[0]
    return out["logps"] if "logps" in out else token_logps(logits, batch.targets)


def supports_head_hook(model) -> bool:
    return extract_model_from_parallel(model).get_output_embeddings() is not None


def check_packing(model, seqs: Sequence[EncodedChat], keep_only: bool, atol: float = 1e-3, window: int = 64) -> None:
    """Refuse architectures whose attention ignores packed position ids (they would attend across
    sequences silently), or whose logits are not what the head path computes: compare each token's
    packed log-prob with the model's own full logits, one sequence at a time. The sequences are cut
    to their last `window` tokens, all scored, so those full logits stay small at any vocabulary."""
    seqs = [EncodedChat(s.input_ids[-window:], list(s.input_ids[-window:])) for s in seqs]
    with torch.no_grad():
        device = next(model.parameters()).device
        batch = pack(seqs, row_len=0).to(device)  # all in one row: the case that needs the mask
        packed = packed_token_logps(model, batch, keep_only)[batch.input_order()]
        single = torch.cat([packed_token_logps(model, pack([s]).to(device), False) for s in seqs])
    err = (packed - single).abs().max().item() if len(single) else 0.0
    if err > atol:
        raise RuntimeError(f"this model's packed log-probs differ from its own logits (max error {err:.2e} per "
                           f"token): its attention must honour packed position ids (attn_implementation 'sdpa', "
                           f"'eager' or 'flash_attention_2'), and a head whose logits are post-processed needs "
                           f"keep_logits_only_for_targets: false")
