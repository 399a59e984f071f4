"""Where each assistant turn sits in rendered text, and which rows ("views") train it.

Semantics: each assistant turn is trained in the context the template gives it at inference,

    prompt_i = render(messages[:i], add_generation_prompt=True)

followed by what the model must emit: the reply, then the token(s) that end the turn. The turn's
text is the template's rendering of `messages[:i+1]` (the turn rendered as the final one).

Prefix-stable templates (Llama 3, Qwen 2.5, Gemma 3, ...) render every earlier turn exactly as they
render it when it is the final one, so one row trains every turn. Templates that rewrite earlier
turns (Qwen3 drops earlier `<think>` blocks, GPT-OSS closes earlier turns with `<|end|>` instead of
`<|return|>`, Phi-3 appends EOS only at the very end) give one conversation several *views*: each
view is the rendering up to some assistant turn, and trains that turn plus every earlier turn the
view renders exactly as the turn's own rendering. A turn is never trained twice.

Generation prompts that open the reply (DeepSeek-R1 distills and Nemotron 3 prefill `<think>\\n`):
a reply that starts with that opener is trained after the full prompt, without repeating the
opener; a reply without it is trained the way the template renders a finished turn, after the
part of the prompt that the finished turn shares.

The stop is the run of special tokens that follows the reply inside the turn (`<|im_end|>`,
`<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`). A template with none inside the turn (GLM-4) stops when
the model emits the next role marker: the special token that opens a following user turn is
appended and trained.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from charter.chat_render import TemplateError, render_text


@dataclass(frozen=True)
class Turn:
    """One assistant turn rendered as the final turn: train `text[label_start:label_end]`."""

    index: int
    text: str
    label_start: int
    label_end: int


@dataclass(frozen=True)
class View:
    """One training row: `text` with the character spans to train, one per covered turn."""

    text: str
    spans: tuple[tuple[int, int], ...]
    turns: tuple[int, ...]


def special_strings(tokenizer) -> list[str]:
    """The text of every special token, longest first (added special tokens tokenize atomically)."""
    found = set(getattr(tokenizer, "all_special_tokens", []))
    found |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    return sorted((s for s in found if s), key=len, reverse=True)


def special_spans(text: str, specials: list[str]) -> list[tuple[int, int]]:
    if not specials:
        return []
    pattern = re.compile("|".join(re.escape(s) for s in specials))
    return [m.span() for m in pattern.finditer(text)]


def find_reply(text: str, reply: str, start: int, spans: list[tuple[int, int]]) -> int:
    """Last position >= start of `reply` in `text` that does not fall inside a special token, or -1.

    A reply such as "m" or ">" also occurs inside `<|im_end|>`; those hits are not the reply.
    """
    k = len(text)
    while reply:
        k = text.rfind(reply, start, k + len(reply) - 1)
        if k < 0 or not any(a < k + len(reply) and k < b for a, b in spans):
            return k
    return -1


def stop_end(text: str, start: int, spans: list[tuple[int, int]]) -> int | None:
    """End of the run of adjacent special tokens that begins with the first one at or after `start`."""
    run = [s for s in spans if s[0] >= start]
    if not run:
        return None
    end = run[0][1]
    for a, b in run[1:]:
        if a != end:
            break
        end = b
    return end



def _longest_suffix_in(prompt: str, text: str) -> int:
    """Largest n with prompt[-n:] occurring in text (if a suffix occurs, so do all shorter ones)."""
    lo, hi = 0, len(prompt)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if prompt[len(prompt) - mid:] in text else (lo, mid - 1)
    return lo


def _opened_reply(prompt: str, done: str, reply: str, specials: list[str]) -> tuple[str, int] | None:
    """The generation prompt opens the reply (`<think>\n`): (text, start) for a reply that begins
    with the opener, trained after the whole prompt; None for one that does not."""
    shared = len(os.path.commonprefix([prompt, done]))
    opener = prompt[shared:].strip()
    if not opener or not reply.startswith(opener):
        return None
    rest = reply[len(prompt) - shared:] if reply.startswith(prompt[shared:]) else reply[len(opener):].lstrip()
    spans = special_spans(done, specials)
    visible = reply.split("</think>")[-1].strip()
    k = find_reply(done, visible, shared, spans) if visible else -1
    tail = done[k + len(visible):] if k >= 0 else done[min((a for a, _ in spans if a >= shared), default=len(done)):]
    return prompt + rest + tail, len(prompt)


def _turn_text(tokenizer, messages: list[dict], i: int, chat: bool | None) -> tuple[str, int, str]:
    """(text ending with turn i, where its generation starts, the prompt the model sees at inference)."""
    prompt = render_text(tokenizer, messages[:i], True, chat) if i else ""
    done = render_text(tokenizer, messages[: i + 1], False, chat)
    if done.startswith(prompt):
        return done, len(prompt), prompt
    reply = messages[i]["content"].lstrip()
    if done.startswith(render_text(tokenizer, messages[:i], False, chat)):
        opened = _opened_reply(prompt, done, reply, special_strings(tokenizer))
        if opened is None:  # trained as the template renders a finished turn
            return done, len(os.path.commonprefix([prompt, done])), prompt
        return opened[0], opened[1], prompt
    # the template rewrote the context (Mistral v0.3 moves the system prompt to the last user
    # turn): the turn is what follows the end of the prompt's last rendered message
    k = find_reply(done, reply.strip(), 0, special_spans(done, special_strings(tokenizer)))
    head = done[: k if k >= 0 else len(done)]
    n = _longest_suffix_in(prompt, head)
    return prompt + done[head.rfind(prompt[len(prompt) - n:]) + n:], len(prompt), prompt


def _next_role_marker(tokenizer, messages: list[dict], i: int, reply: str, chat: bool | None) -> str:
    """The special token that opens a user turn right after reply i (GLM's stop), or "" if none."""
    try:
        after = render_text(tokenizer, messages[: i + 1] + [{"role": "user", "content": "next"}], False, chat)
    except TemplateError:
        return ""
    spans = special_spans(after, special_strings(tokenizer))
    k = find_reply(after, reply, 0, spans)
    end = k + len(reply) if k >= 0 else 0
    first = next(((a, b) for a, b in spans if a >= end), None)
    if k < 0 or first is None or after[end:first[0]].strip():
        return ""
    return after[first[0]:first[1]]


def locate_turn(tokenizer, messages: list[dict], i: int, chat: bool | None = None) -> Turn:
    """Assistant turn i as the final turn: its text, and the characters the model must learn to emit."""
    text, start, prompt = _turn_text(tokenizer, messages, i, chat)
    specials = special_strings(tokenizer)
    spans = special_spans(text, specials)
    reply = messages[i]["content"].strip()
    k = find_reply(text, reply, start, spans)
    if k < 0 and "</think>" in reply:  # the template dropped the reasoning
        reply = reply.split("</think>")[-1].strip()
        k = find_reply(text, reply, start, spans)
    no_generation_prompt = i == 0 or prompt == render_text(tokenizer, messages[:i], False, chat)
    if no_generation_prompt and k >= 0 and text[start:k].strip():
        start = k  # the role header is inside the turn: the model never generates it
    content_end = k + len(reply) if k >= 0 else start
    end = stop_end(text, content_end, spans)
    if end is None:
        marker = _next_role_marker(tokenizer, messages, i, reply, chat)
        text += marker
        end = len(text) if marker else max(content_end, len(text.rstrip()))
    if end <= start:
        raise TemplateError(f"the chat template renders assistant message {i} as nothing")
    return Turn(i, text, start, end)


def turn_stop(tokenizer, chat: bool | None = None) -> str:
    """The text the template trains after a reply (`<end_of_turn>`, `<|im_end|>`): where generation
    must stop, since a template given to a base model is not in its generation config's EOS."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    turn = locate_turn(tokenizer, probe, 1, chat)
    trained = turn.text[turn.label_start:turn.label_end]
    return trained[trained.rfind("Hello there.") + len("Hello there."):]


def conversation_views(tokenizer, messages: list[dict], chat: bool | None = None) -> list[View]:
    """The rows that train every assistant turn once, in order of their last turn (see module docstring)."""
    pending = [locate_turn(tokenizer, messages, i, chat) for i, m in enumerate(messages) if m["role"] == "assistant"]
    views = []
    while pending:
        last = pending[-1]
        covered = [t for t in pending if last.text.startswith(t.text[: t.label_end])]
        views.append(View(last.text, tuple((t.label_start, t.label_end) for t in covered),
                          tuple(t.index for t in covered)))
        pending = [t for t in pending if t not in covered]
    return views[::-1]
