"""Dataset rows -> chat messages: the one reading of every accepted row format.

Chat SFT, Alpaca, prompt/completion and HH-RLHF transcripts become a message list; explicit,
implicit-prompt, HH-RLHF and Together-export preference rows become (prompt, chosen, rejected).
Training (`charter.train.data`) and export/validation (`charter.data.formats`) both read rows
here, so they agree on what a row means. Errors are `ValueError("field: what is wrong")`; the
caller adds the file and line.
"""
from __future__ import annotations

from typing import Any


def _hh_to_messages(text: str) -> list[dict]:
    """`\\n\\nHuman: ...\\n\\nAssistant: ...` transcript -> messages."""
    msgs: list[dict] = []
    for chunk in text.split("\n\nHuman:")[1:] if "\n\nHuman:" in text else []:
        human, *assistants = chunk.split("\n\nAssistant:")
        msgs.append({"role": "user", "content": human.strip()})
        for a in assistants:
            msgs.append({"role": "assistant", "content": a.strip()})
    if not msgs:
        raise ValueError("HH transcript has no '\\n\\nHuman:' turn")
    return msgs


def sft_messages(row: dict[str, Any]) -> list[dict]:
    """Chat `messages`, Alpaca `instruction/input/output`, or `prompt`/`completion` -> messages."""
    if "messages" in row:
        return row["messages"]
    if "instruction" in row and "output" in row:
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    if "prompt" in row and "completion" in row:
        return _as_prompt(row["prompt"]) + _as_completion(row["completion"], "completion")
    if "text" in row and "\n\nHuman:" in row["text"]:
        return _hh_to_messages(row["text"])
    raise ValueError("messages: missing (expected 'messages', Alpaca 'instruction'/'output', "
                     "or 'prompt'/'completion')")


def _as_prompt(p: Any) -> list[dict]:
    if isinstance(p, str):
        return [{"role": "user", "content": p}]
    if isinstance(p, list):
        return p
    raise ValueError(f"prompt: expected a string or a message list, got {type(p).__name__}")


def _as_completion(c: Any, field: str) -> list[dict]:
    if isinstance(c, str):
        return [{"role": "assistant", "content": c}]
    if isinstance(c, list) and c:
        return c
    raise ValueError(f"{field}: expected a string or a non-empty list of assistant messages")


def _split_shared_prefix(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n > 0 and a[n - 1].get("role") == "assistant":  # the completion starts at an assistant turn
        n -= 1
    return a[:n], a[n:], b[n:]


def pair_messages(row: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) from explicit, implicit, HH-RLHF or Together-export rows."""
    if "input" in row and "preferred_output" in row:  # Together export
        return (row["input"].get("messages", []), _as_completion(row["preferred_output"], "preferred_output"),
                _as_completion(row["non_preferred_output"], "non_preferred_output"))
    for f in ("chosen", "rejected"):
        if f not in row:
            raise ValueError(f"{f}: missing")
    c, r = row["chosen"], row["rejected"]
    if "prompt" in row:
        return _as_prompt(row["prompt"]), _as_completion(c, "chosen"), _as_completion(r, "rejected")
    if isinstance(c, str) and isinstance(r, str):  # HH-RLHF: prompt = up to the last "\n\nAssistant:"
        cut = c.rfind("\n\nAssistant:") + len("\n\nAssistant:")
        if cut < len("\n\nAssistant:") or r[:cut] != c[:cut]:
            raise ValueError("chosen/rejected: HH transcripts must share everything up to the last Assistant turn")
        if c == r:
            raise ValueError("chosen/rejected: identical")
        msgs = _hh_to_messages(c[:cut])
        return msgs[:-1] if msgs[-1]["role"] == "assistant" and not msgs[-1]["content"] else msgs, \
            _as_completion(c[cut:].strip(), "chosen"), _as_completion(r[cut:].strip(), "rejected")
    if isinstance(c, list) and isinstance(r, list):  # implicit prompt: shared conversation prefix
        prompt, cc, rr = _split_shared_prefix(c, r)
        if not prompt:
            raise ValueError("chosen/rejected: implicit-prompt pairs must share a prompt prefix")
        return prompt, cc, rr
    raise ValueError("chosen/rejected: expected strings or message lists, with or without 'prompt'")
