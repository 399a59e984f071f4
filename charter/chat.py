"""Conversations -> `input_ids` + `labels` for training, and prompts for generation.

Why this module exists: the loss must cover the content of *every* assistant turn plus the
end-of-turn token that closes it (so the model learns to stop), and nothing else. Real chat
templates rarely mark assistant spans, so we derive them by rendering the conversation one
prefix at a time:

    before_i  = render(messages[:i], add_generation_prompt=True)   # ends with the assistant header
    through_i = render(messages[:i+1])                              # ends after the assistant turn

Assistant turn i occupies `through_i[len(before_i):]` of the full rendering. We check that every
prefix really is a prefix of the full text (some templates, e.g. Mistral v0.3 with a system
prompt, move text around and are not prefix-stable: we refuse them loudly rather than mask the
wrong tokens). Inside each span we train from the content's first character up to and including
the first special token after the content (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, `</s>`).
Characters are mapped to tokens with the fast tokenizer's offsets, so the `input_ids` are exactly
the tokenization of the full rendered text.

Base models have no chat template: `render_text` then uses a plain `Human:`/`Assistant:`
transcript with EOS after each assistant turn. It is never installed as the tokenizer's
template, so no chat template leaks into base-model prompts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


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
    tokens: int = 0
    trainable_tokens: int = 0
    dropped_rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dropped_rows")
        return d


# ---------------------------------------------------------------------------------------------
# rendering


def has_chat_template(tokenizer) -> bool:
    """True when the tokenizer carries its own chat template (instruct models); False for base models."""
    return bool(getattr(tokenizer, "chat_template", None))


def fallback_render(messages: list[dict], add_generation_prompt: bool = False, bos_token: str | None = None,
                    eos_token: str | None = None) -> str:
    """Plain transcript for base models: `BOS system\\n\\nHuman: ...\\n\\nAssistant: ...EOS`.

    The generation prompt ends with `Assistant:` (no space) so the model generates ` answer`,
    the same split that training sees.
    """
    turns = []
    for m in messages:
        if m["role"] == "system":
            turns.append(m["content"])
        elif m["role"] == "user":
            turns.append(f"Human: {m['content']}")
        else:
            turns.append(f"Assistant: {m['content']}{eos_token or ''}")
    if add_generation_prompt:
        turns.append("Assistant:")
    return (bos_token or "") + "\n\n".join(turns)


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                chat: bool | None = None) -> str:
    """Render with the tokenizer's template, or the base-model fallback when it has none.

    `chat=False` forces the plain transcript even when the tokenizer ships a template (a base
    model whose tokenizer came from its instruct sibling); `chat=True` insists on the template.
    """
    use_template = has_chat_template(tokenizer) if chat is None else chat
    if use_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return fallback_render(messages, add_generation_prompt, getattr(tokenizer, "bos_token", None),
                           getattr(tokenizer, "eos_token", None))


def render_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                  chat: bool | None = None) -> str:
    """The text a generator should feed the model (tokenize it with `add_special_tokens=False`)."""
    return render_text(tokenizer, check_messages(messages), add_generation_prompt, chat)


def check_messages(messages: Any, where: str = "messages") -> list[dict]:
    """Validate `[{role, content}, ...]`; errors name the offending index and field."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}[{i}]: expected an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}].role: expected one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}].content: expected a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise ValueError(f"{where}[{i}].role: a system message may only come first")
        out.append({"role": role, "content": content})
    return out


# ---------------------------------------------------------------------------------------------
# masking


class TemplateError(ValueError):
    """The chat template cannot be masked by prefix rendering (it is not prefix-stable)."""


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int, int, int]]]:
    """Full rendered text plus, per assistant turn, (span_start, content_start, content_end, span_end).

    span = what the turn adds after the generation prompt. content_start skips any header the
    template put inside the span (templates that ignore `add_generation_prompt`) but keeps leading
    whitespace, which the model must generate too (Mistral's `[/INST] answer`).
    """
    full = render_text(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_text(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render_text(tokenizer, messages[: i + 1])
        for what, text in ((f"generation prompt after the first {i} messages", before),
                           (f"rendering of the first {i + 1} messages", through)):
            if not full.startswith(text):
                raise TemplateError(
                    f"chat template is not prefix-stable: the {what} is not a prefix of the whole "
                    f"conversation, so assistant turns cannot be located. Use a template that renders "
                    f"earlier turns identically whatever follows them.")
        start, end = len(before), len(through)
        if end <= start:
            raise TemplateError(f"chat template renders assistant message {i} as nothing")
        segment = full[start:end]
        content = m["content"].strip()
        k = segment.rfind(content) if content else -1  # rfind: headers come before the content
        if k < 0:  # empty, or the template rewrote the content: everything up to end-of-turn is the turn
            spans.append((start, start, start, end))
            continue
        content_start = start if segment[:k].strip() == "" else start + k
        spans.append((start, content_start, start + k + len(content), end))
    return full, spans


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _encode_full(tokenizer, messages: list[dict]) -> EncodedChat:
    full, spans = assistant_char_spans(tokenizer, messages)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("encode_chat needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    special = _special_ids(tokenizer)
    labels = [IGNORE_INDEX] * len(ids)
    for _span_start, content_start, content_end, span_end in spans:
        # tokens overlapping [content_start, span_end), in order, through the first special token
        # that starts at or after the content's end (the end-of-turn token)
        for t, (a, b) in enumerate(offsets):
            if b > content_start and a < span_end and b > a:
                labels[t] = ids[t]
                if a >= content_end and ids[t] in special:
                    break
    return EncodedChat(input_ids=list(ids), labels=labels)


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


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> EncodedChat | None:
    """Tokenize a conversation and mask everything but assistant turns (+ their end-of-turn token).

    Trailing non-assistant messages carry nothing to learn and are dropped. With `max_length`,
    whole early exchanges (after the system prompt) are dropped first, then the end of the final
    completion is cut; BOS and the system prompt always survive. Returns None when no trainable
    token is left.
    """
    messages = check_messages(messages)
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    if not messages:
        return None
    enc = _encode_full(tokenizer, messages)
    dropped = 0
    if max_length is not None:
        while len(enc) > max_length:
            shorter = drop_first_exchange(messages)
            if shorter is None:
                break
            messages, dropped = shorter, dropped + 1
            enc = _encode_full(tokenizer, messages)
        if len(enc) > max_length:
            enc = EncodedChat(enc.input_ids[:max_length], enc.labels[:max_length], truncated=True)
        enc.truncated = enc.truncated or dropped > 0
        enc.dropped_turns = dropped
    return enc if enc.n_trainable > 0 else None


def encode_dataset(tokenizer, rows: Iterable[dict | list], max_length: int | None = None,
                   source: str = "rows", names: Sequence[str] | None = None) -> tuple[list[EncodedChat], EncodeStats]:
    """Encode many `{"messages": [...]}` rows (or bare message lists), counting what was dropped.

    A bad row's error starts with `names[n]` (e.g. "file.jsonl:12") or else "{source} row {n + 1}".
    """
    out: list[EncodedChat] = []
    stats = EncodeStats()
    for n, row in enumerate(rows):
        stats.rows += 1
        msgs = row.get("messages") if isinstance(row, dict) else row
        try:
            enc = encode_chat(tokenizer, msgs, max_length)
        except TemplateError:
            raise
        except ValueError as e:
            raise ValueError(f"{names[n] if names is not None else f'{source} row {n + 1}'}: {e}") from None
        if enc is None:
            stats.dropped_no_trainable += 1
            stats.dropped_rows.append(n)
            continue
        stats.kept += 1
        stats.truncated += enc.truncated
        stats.dropped_turns += enc.dropped_turns
        stats.tokens += len(enc)
        stats.trainable_tokens += enc.n_trainable
        out.append(enc)
    return out, stats
