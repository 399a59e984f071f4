"""Dataset formats: detect, normalise, validate and export preference pairs and SFT rows.

Reading every format (explicit/implicit preference pairs, HH-RLHF, Together DPO, chat SFT,
Alpaca) into chat messages is `charter.data.rows.pair_messages` / `sft_messages`, so
training and export agree on what a row means. This module adds the checks a file needs
before it is uploaded anywhere (empty or identical sides, bad roles) and the writers for
the Together / OpenAI fine-tuning formats:

- together-dpo: `{"input": {"messages": [...]}, "preferred_output": [assistant], "non_preferred_output": [assistant]}`
- together-sft: `{"messages": [...]}`
- pairs / sft: Charter's own explicit forms (e.g. HH-RLHF -> `{"prompt", "chosen", "rejected"}` messages)

Every problem is reported as `file:line: field: what is wrong`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from charter.chat import check_messages
from charter.data.jsonl import DataError, atomic_write_text
from charter.data.sources import iter_records
from charter.data.rows import pair_messages, sft_messages

EXPORT_FORMATS = ["together-dpo", "together-sft", "pairs", "sft"]
VALIDATE_FORMATS = EXPORT_FORMATS


def detect_format(row: dict[str, Any]) -> str:
    """Name the row's format: together-dpo, pair, pair-implicit, hh-rlhf, chat, alpaca, or unknown."""
    if "input" in row and "preferred_output" in row:
        return "together-dpo"
    if "chosen" in row and "rejected" in row:
        if "prompt" in row:
            return "pair"
        return "hh-rlhf" if isinstance(row["chosen"], str) else "pair-implicit"
    if "messages" in row:
        return "chat"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return "unknown"


def normalise_pair(row: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) as validated messages; flags empty and identical sides."""
    together = detect_format(row) == "together-dpo"
    p_name, c_name, r_name = (("input.messages", "preferred_output", "non_preferred_output") if together
                              else ("prompt", "chosen", "rejected"))
    for f in (("input", c_name, r_name) if together else ()):
        if f not in row:
            raise ValueError(f"{f}: missing")
    prompt, chosen, rejected = pair_messages(row)
    prompt = check_messages(prompt, p_name)
    chosen, rejected = check_messages(chosen, c_name), check_messages(rejected, r_name)
    if prompt[-1]["role"] != "user":
        raise ValueError(f"{p_name}[{len(prompt) - 1}].role: the prompt must end with a user turn")
    for name, side in ((c_name, chosen), (r_name, rejected)):
        for i, m in enumerate(side):
            if m["role"] != "assistant":
                raise ValueError(f"{name}[{i}].role: expected 'assistant', got {m['role']!r}")
            if not m["content"].strip():
                raise ValueError(f"{name}[{i}].content: empty")
    if chosen == rejected:
        raise ValueError(f"{c_name}/{r_name}: identical")
    return prompt, chosen, rejected


def normalise_sft(row: dict[str, Any]) -> list[dict]:
    """Chat/Alpaca row (or a preference pair: prompt + chosen) -> validated messages with an assistant turn."""
    if detect_format(row) in ("pair", "pair-implicit", "hh-rlhf", "together-dpo"):
        prompt, chosen, _ = normalise_pair(row)
        return prompt + chosen
    msgs = check_messages(sft_messages(row), "messages")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        raise ValueError("messages: no non-empty assistant turn to train on")
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"messages[{len(msgs) - 1}].role: the conversation must end with an assistant turn")
    return msgs


def to_together_dpo(row: dict[str, Any]) -> dict[str, Any]:
    prompt, chosen, rejected = normalise_pair(row)
    if len(chosen) != 1 or len(rejected) != 1:
        raise ValueError("chosen/rejected: Together DPO takes exactly one assistant message per side")
    return {"input": {"messages": prompt}, "preferred_output": chosen, "non_preferred_output": rejected}


def to_together_sft(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": normalise_sft(row)}


def _check_together_dpo(row: dict[str, Any]) -> None:
    for f in ("input", "preferred_output", "non_preferred_output"):
        if f not in row:
            raise ValueError(f"{f}: missing")
    if not isinstance(row["input"], dict) or "messages" not in row["input"]:
        raise ValueError("input.messages: missing (expected {\"messages\": [...]})")
    extra = set(row) - {"input", "preferred_output", "non_preferred_output"}
    if extra:
        raise ValueError(f"{sorted(extra)[0]}: unexpected field for together-dpo")
    check_messages(row["input"]["messages"], "input.messages")
    to_together_dpo(row)


def _check_together_sft(row: dict[str, Any]) -> None:
    if "messages" not in row:
        raise ValueError("messages: missing")
    extra = set(row) - {"messages"}
    if extra:
        raise ValueError(f"{sorted(extra)[0]}: unexpected field for together-sft")
    normalise_sft(row)


CHECKS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "pairs": normalise_pair,
    "sft": normalise_sft,
    "together-dpo": _check_together_dpo,
    "together-sft": _check_together_sft,
}
WRITERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "together-dpo": to_together_dpo,
    "together-sft": to_together_sft,
    "pairs": lambda row: dict(zip(("prompt", "chosen", "rejected"), normalise_pair(row))),  # Charter's explicit form
    "sft": lambda row: {"messages": normalise_sft(row)},
}


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line, row, parse error) in line order: a line that does not parse is reported and skipped, so
    one run lists every problem. A missing, non-UTF-8 or record-less file fails at once."""
    bad: list[str] = []
    for lineno, row in iter_records(path, allow_empty=False, bad_lines=bad):
        yield from ((0, None, e) for e in bad)
        bad.clear()
        yield lineno, row, None
    yield from ((0, None, e) for e in bad)


def validate_file(path: str | Path, fmt: str) -> tuple[int, list[str]]:
    """(rows that pass, errors as `file:line: field: message`)."""
    if fmt not in CHECKS:
        raise DataError(f"unknown format {fmt!r}; expected one of {VALIDATE_FORMATS}")
    path = Path(path)
    ok, errors = 0, []
    for lineno, row, parse_error in _rows(path):
        if parse_error:
            errors.append(parse_error)
            continue
        try:
            CHECKS[fmt](row)
            ok += 1
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            errors.append(f"{path}:{lineno}: {e}")
    return ok, errors


def export_file(src: str | Path, dst: str | Path, fmt: str, skip_bad: bool = False) -> tuple[int, list[str]]:
    """Convert `src` to `fmt` at `dst` (atomic). Bad rows are errors, or skipped and listed with `skip_bad`."""
    import json

    if fmt not in WRITERS:
        raise DataError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    src = Path(src)
    out, errors = [], []
    for lineno, row, parse_error in _rows(src):
        if parse_error:
            errors.append(parse_error)
            continue
        try:
            out.append(json.dumps(WRITERS[fmt](row), ensure_ascii=False))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            errors.append(f"{src}:{lineno}: {e}")
    if errors and not skip_bad:
        raise DataError(f"{len(errors)} bad row(s), nothing written:\n" + "\n".join(errors[:20]))
    atomic_write_text(dst, "".join(line + "\n" for line in out))
    return len(out), errors
