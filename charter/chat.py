"""Conversations -> `input_ids` + `labels` for training.

Why this module exists: the loss must cover *every* assistant turn plus the token(s) that end it
(so the model learns to stop), and nothing else. Real chat templates rarely mark assistant spans,
so `charter.chat_views` derives them by rendering the conversation one turn at a time, each turn
in the context the template gives it at inference. Templates that rewrite earlier turns (Qwen3,
GPT-OSS, Phi-3, DeepSeek-R1) are not refused: a conversation then encodes to several rows
(views), and each assistant turn is trained in exactly one of them. Characters are mapped to
tokens with the fast tokenizer's offsets, so `input_ids` are exactly the tokenization of the
rendered text.

Base models (no template, or `chat=False`) use the plain `Human:`/`Assistant:` frame with EOS
after each assistant turn, the same frame the generation backends prompt them with; message
contents are checked for template markers so no chat template leaks into a base model's data.
Rendering lives in `charter.chat_render`; its names are re-exported here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from charter.chat_render import (FRAME_STOPS, ROLES, TemplateError, TemplateLeakError, assert_no_template,
                                 check_messages, fallback_render, frame_reply, has_chat_template, render_prompt,
                                 render_text, template_markers, uses_template)
from charter.chat_views import View, conversation_views

__all__ = ["FRAME_STOPS", "IGNORE_INDEX", "ROLES", "EncodedChat", "EncodeStats", "TemplateError",
           "TemplateLeakError", "check_messages", "encode_chat", "encode_dataset", "encode_views", "fallback_render",
           "frame_reply", "has_chat_template", "render_prompt", "render_text"]

IGNORE_INDEX = -100


@dataclass
class EncodedChat:
    """One training row. `labels[t] == input_ids[t]` where trained, else -100 (unshifted)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    dropped_turns: int = 0

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    """What `encode_dataset` did, so callers can log and report it."""

    rows: int = 0
    kept: int = 0
    dropped_no_trainable: int = 0
    truncated: int = 0
    dropped_turns: int = 0
    extra_views: int = 0  # rows beyond one per conversation, for templates that rewrite earlier turns
    tokens: int = 0
    trainable_tokens: int = 0
    dropped_rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dropped_rows")
        return d


def drop_first_exchange(messages: list[dict]) -> list[dict] | None:
    """Remove the earliest user..assistant exchange after the system prompt; None if only one is left."""
    head = 1 if messages and messages[0]["role"] == "system" else 0
    body = messages[head:]
    # next exchange starts at the second user message of the body
    users = [j for j, m in enumerate(body) if m["role"] == "user"]
    nxt = users[1] if len(users) > 1 else None
    if nxt is None:
        return None
    return messages[:head] + body[nxt:]


def _encode_view(tokenizer, view: View) -> EncodedChat:
    """Tokenize the view's text; label every token that overlaps a trained character span."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("encoding chats needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(view.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(b > start and a < end for start, end in view.spans):
            labels[t] = ids[t]
    return EncodedChat(input_ids=ids, labels=labels)


def _last_view(tokenizer, messages: list[dict], max_length: int | None, chat: bool | None) -> EncodedChat:
    """The view ending at the final turn. Over `max_length`: drop whole early exchanges (after the
    system prompt), then cut the end of the final completion; BOS and the system prompt survive."""
    enc, dropped = _encode_view(tokenizer, conversation_views(tokenizer, messages, chat)[-1]), 0
    if max_length is None:
        return enc
    while len(enc) > max_length:
        shorter = drop_first_exchange(messages)
        if shorter is None:
            break
        messages, dropped = shorter, dropped + 1
        enc = _encode_view(tokenizer, conversation_views(tokenizer, messages, chat)[-1])
    if len(enc) > max_length:
        enc = EncodedChat(enc.input_ids[:max_length], enc.labels[:max_length], truncated=True)
    enc.truncated = enc.truncated or dropped > 0
    enc.dropped_turns = dropped
    return enc


def _trainable_messages(tokenizer, messages: Any, chat: bool | None) -> list[dict]:
    """Validated messages without trailing non-assistant turns (nothing to learn there); for base
    models, the contents are checked for chat-template markers."""
    messages = check_messages(messages)
    if not uses_template(tokenizer, chat) and tokenizer is not None:
        markers = template_markers(tokenizer)
        for i, m in enumerate(messages):
            assert_no_template(m["content"], tokenizer, f"messages[{i}].content", markers)
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    return messages


def encode_views(tokenizer, messages: list[dict], max_length: int | None = None,
                 chat: bool | None = None) -> list[EncodedChat]:
    """Every row needed to train each assistant turn once (one row for prefix-stable templates).

    Rows left with no trainable token are omitted. See `charter.chat_views` for the semantics.
    """
    messages = _trainable_messages(tokenizer, messages, chat)
    if not messages:
        return []
    out = []
    for view in conversation_views(tokenizer, messages, chat):
        enc = _encode_view(tokenizer, view)
        if max_length is not None and len(enc) > max_length:
            enc = _last_view(tokenizer, messages[: view.turns[-1] + 1], max_length, chat)
        if enc.n_trainable:
            out.append(enc)
    return out


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None,
                chat: bool | None = None) -> EncodedChat | None:
    """The row ending at the final assistant turn, masked to assistant turns + their stop token(s).

    For prefix-stable templates this row trains every assistant turn. Templates that rewrite
    earlier turns need more rows for those turns: use `encode_views` (SFT does, via
    `encode_dataset`). Returns None when no trainable token is left.
    """
    messages = _trainable_messages(tokenizer, messages, chat)
    if not messages:
        return None
    enc = _last_view(tokenizer, messages, max_length, chat)
    return enc if enc.n_trainable > 0 else None


def encode_dataset(tokenizer, rows: Iterable[dict | list], max_length: int | None = None,
                   source: str = "rows", names: Sequence[str] | None = None,
                   chat: bool | None = None) -> tuple[list[EncodedChat], EncodeStats]:
    """Encode many `{"messages": [...]}` rows (or bare message lists), counting what was dropped.

    A bad row's error starts with `names[n]` (e.g. "file.jsonl:12") or else "{source} row {n + 1}".
    """
    out: list[EncodedChat] = []
    stats = EncodeStats()
    for n, row in enumerate(rows):
        stats.rows += 1
        msgs = row.get("messages") if isinstance(row, dict) else row
        try:
            encs = encode_views(tokenizer, msgs, max_length, chat)
        except ValueError as e:
            kind = type(e) if isinstance(e, (TemplateError, TemplateLeakError)) else ValueError
            raise kind(f"{names[n] if names is not None else f'{source} row {n + 1}'}: {e}") from None
        if not encs:
            stats.dropped_no_trainable += 1
            stats.dropped_rows.append(n)
            continue
        stats.kept += 1
        stats.extra_views += len(encs) - 1
        for enc in encs:
            stats.truncated += enc.truncated
            stats.dropped_turns += enc.dropped_turns
            stats.tokens += len(enc)
            stats.trainable_tokens += enc.n_trainable
        out.extend(encs)
    return out, stats
