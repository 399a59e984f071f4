"""Messages -> text: the tokenizer's chat template, or the plain frame for base models.

Why this module exists: every path that turns a conversation into text (generation prompts, SFT
rows, DPO pairs) must render it the same way, and a template's refusal ("roles must alternate",
"system role not supported") must reach the user as one clear line, not a Jinja traceback.

Two template quirks are smoothed over here, once per template:
- templates with no system role (Gemma 1/2) get the system prompt folded into the first user
  turn, as `system\\n\\nuser`, which is how Gemma 3 renders a system prompt itself;
- vision templates that only read content lists (`[{"type": "text", "text": ...}]`: Llava-Next,
  Idefics3, SmolVLM) get string contents wrapped in a text item.

Base models render the plain `Human:`/`Assistant:` frame; the leak guard makes sure no template
marker or special token reaches a base model through message contents.
"""
from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


class TemplateError(ValueError):
    """The chat template cannot render or mask this conversation; the message says what to do."""


class TemplateLeakError(ValueError):
    """A chat-template marker or special token reached a base-model input."""


def has_chat_template(tokenizer) -> bool:
    """True when the tokenizer carries its own chat template (instruct models); False for base models."""
    return bool(getattr(tokenizer, "chat_template", None))


def uses_template(tokenizer, chat: bool | None) -> bool:
    """`chat=None` follows the tokenizer; `chat=False` forces the plain frame (base models)."""
    return has_chat_template(tokenizer) if chat is None else chat


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


# Where a base model's reply ends in the plain frame when it does not emit EOS: it goes on to
# write the next turn itself. Generation stops at these; training teaches EOS after each reply.
FRAME_STOPS = ["\n\nHuman:", "\n\nAssistant:"]


def frame_reply(text: str) -> str:
    """A reply generated after the frame's `Assistant:` starts with the space that `fallback_render`
    writes itself (`Assistant: {content}`): drop it, so a stored reply renders back as generated."""
    return text[1:] if text.startswith(" ") else text


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


# ---------------------------------------------------------------------------------------------
# template quirks, probed once per template

_PROBE = "charter probe"


def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _renders(tokenizer, messages: list[dict], needle: str) -> bool:
    try:
        return needle in _apply(tokenizer, messages, True)
    except Exception:  # noqa: BLE001 - a probe: any failure means "not like this"
        return False


_QUIRKS: dict[str, tuple[bool, bool]] = {}


def _quirks(tokenizer) -> tuple[bool, bool]:
    """(needs content lists, has no system role) for this template, found by rendering probes once."""
    key = str(tokenizer.chat_template)
    if key in _QUIRKS:
        return _QUIRKS[key]
    as_list = [{"type": "text", "text": _PROBE}]
    lists = not _renders(tokenizer, [{"role": "user", "content": _PROBE}], _PROBE) and \
        _renders(tokenizer, [{"role": "user", "content": as_list}], _PROBE)
    user = [{"role": "user", "content": as_list if lists else "u"}]
    no_system = not _renders(tokenizer, [{"role": "system", "content": as_list if lists else _PROBE}] + user, _PROBE)
    _QUIRKS[key] = (lists, no_system)
    return lists, no_system


def adapt_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """Fold the system prompt / wrap contents where the template needs it (see the module docstring)."""
    lists, no_system = _quirks(tokenizer)
    if no_system and messages[0]["role"] == "system" and len(messages) > 1 and messages[1]["role"] == "user":
        first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
        messages = [first] + messages[2:]
    if lists:
        messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    return messages


def _template_error(err: Exception) -> TemplateError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "alternate" in msg:
        hint = "merge consecutive messages of the same role so user and assistant turns alternate"
    elif "system" in msg.lower():
        hint = "drop the system message or fold it into the first user turn"
    else:
        hint = "check the roles and order of the messages against what this model's template accepts"
    return TemplateError(f"the chat template rejected the conversation ({msg}): {hint}")


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                chat: bool | None = None) -> str:
    """Render with the tokenizer's template, or the base-model fallback when it has none.

    `chat=False` forces the plain transcript even when the tokenizer ships a template (a base
    model whose tokenizer came from its instruct sibling); `chat=True` insists on the template.
    Template refusals become a one-line `TemplateError`.
    """
    if not uses_template(tokenizer, chat):
        return fallback_render(messages, add_generation_prompt, getattr(tokenizer, "bos_token", None),
                               getattr(tokenizer, "eos_token", None))
    if not messages:
        return ""
    try:
        return _apply(tokenizer, adapt_messages(tokenizer, messages), add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja2 raises TemplateError, UndefinedError, TypeError...
        if type(e).__module__.startswith("jinja2"):
            raise _template_error(e) from None
        raise


def render_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                  chat: bool | None = None) -> str:
    """The text a generator should feed the model (tokenize it with `add_special_tokens=False`)."""
    return render_text(tokenizer, check_messages(messages), add_generation_prompt, chat)


# ---------------------------------------------------------------------------------------------
# the leak guard


def template_markers(tokenizer) -> list[str]:
    """Literal text a chat template would add: special tokens, and the scaffolding the template renders."""
    allowed = {tokenizer.bos_token} - {None}
    markers = {t for t in getattr(tokenizer, "all_special_tokens", []) if t not in allowed and t != tokenizer.pad_token}
    markers |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                if getattr(t, "special", False) and str(t) not in allowed}
    if getattr(tokenizer, "chat_template", None):
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"},
                                               {"role": "assistant", "content": "\x00"}], tokenize=False)
        markers |= {frag.strip() for frag in probe.split("\x00") if len(frag.strip()) >= 3}
    return sorted(markers, key=len, reverse=True)


def assert_no_template(text: str, tokenizer, where: str = "base-model prompt", markers: list[str] | None = None) -> None:
    """Raise TemplateLeakError if `text` holds any chat-template marker or encodes to a special token."""
    for m in template_markers(tokenizer) if markers is None else markers:
        if m in text:
            raise TemplateLeakError(f"{where}: chat-template marker {m!r} in a base-model input: {text[:120]!r}")
    special = set(getattr(tokenizer, "all_special_ids", [])) - {tokenizer.bos_token_id, None}
    hit = special & set(tokenizer.encode(text, add_special_tokens=False))
    if hit:
        raise TemplateLeakError(f"{where}: special token ids {sorted(hit)} in a base-model input")
