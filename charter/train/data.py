"""Training rows from JSONL: chat SFT / Alpaca / HH-RLHF / preference pairs -> token ids + labels.

Every accepted format is normalised to chat messages first, then tokenised by
`charter.chat.encode_chat`, so SFT and DPO mask exactly the same way. A bad row raises
`DataError` naming file, line and field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from charter.chat import IGNORE_INDEX, EncodedChat, EncodeStats, encode_chat, encode_dataset, render_text
from charter.data.jsonl import DataError
from charter.data.sources import iter_records
from charter.data.rows import pair_messages, sft_messages


SFT_DATA = 'chat JSONL ({"messages": [...]}, Alpaca or prompt/completion)'  # what a bad `data` file is told
DPO_DATA = "JSONL preference pairs {prompt, chosen, rejected}"


@dataclass
class Pair:
    chosen: EncodedChat
    rejected: EncodedChat
    label_prob: float | None = None
    index: int = -1  # position in the data file's kept pairs (keys the reference log-prob cache)


# ----------------------------------------------------------------------------- tokenisation



def encode_pair(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict],
                max_length: int | None, chat: bool | None = None) -> Pair | None:
    """Labels cover only the final completion (content + end-of-turn), never assistant turns in
    the prompt. The completion starts where the tokenised prompt stops being a prefix of the
    tokenised conversation (as TRL does). Over-long rows keep the prompt and cut the completion's
    end; a pair whose prompt fills max_length is dropped (None). `chat=False`: plain base-model frame."""
    ec, er = encode_chat(tokenizer, prompt + chosen, chat=chat), encode_chat(tokenizer, prompt + rejected, chat=chat)
    if ec is None or er is None:
        return None
    prompt_ids = tokenizer(render_text(tokenizer, prompt, add_generation_prompt=True, chat=chat),
                           add_special_tokens=False)["input_ids"]
    start = min(len(os.path.commonprefix([prompt_ids, ids])) for ids in (ec.input_ids, er.input_ids))
    seqs = []
    for e in (ec, er):
        labels = [IGNORE_INDEX] * start + list(e.labels[start:])
        ids = list(e.input_ids)
        if max_length is not None and len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
        s = EncodedChat(ids, labels)
        if s.n_trainable == 0:
            return None
        seqs.append(s)
    return Pair(seqs[0], seqs[1])


def read_sft(path: str | Path, tokenizer, max_length: int | None,
             chat: bool | None = None) -> tuple[list[EncodedChat], EncodeStats]:
    """(sequences, `encode_dataset`'s stats: rows dropped with no trainable token, rows truncated, turns cut)."""
    rows = list(iter_records(path, SFT_DATA, allow_empty=False))
    messages = []
    for lineno, row in rows:
        try:
            messages.append(sft_messages(row))
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
    try:
        seqs, stats = encode_dataset(tokenizer, messages, max_length, names=[f"{path}:{n}" for n, _ in rows], chat=chat)
    except ValueError as e:
        raise DataError(str(e)) from None
    if not seqs:
        raise DataError(f"{path}: no trainable rows")
    return seqs, stats


def load_pairs(path: str | Path, tokenizer, max_length: int | None, chat: bool | None = None) -> tuple[list[Pair], int]:
    out, dropped = [], 0
    for lineno, row in iter_records(path, DPO_DATA, allow_empty=False):
        try:
            prompt, chosen, rejected = pair_messages(row)
            pair = encode_pair(tokenizer, prompt, chosen, rejected, max_length, chat)
            lp = row.get("label_prob")
            if lp is not None and not (isinstance(lp, (int, float)) and 0.0 <= lp <= 1.0):
                raise ValueError(f"label_prob: expected a number in [0, 1], got {lp!r}")
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        if pair is None:
            dropped += 1
            continue
        pair.label_prob = None if lp is None else float(lp)
        pair.index = len(out)
        out.append(pair)
    if not out:
        raise DataError(f"{path}: no trainable pairs")
    return out, dropped
