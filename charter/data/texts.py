"""The one reader for user files of prompts (or texts): every command reads them by the same rules.

- `.txt` (any suffix but the ones below): one per line; blank lines and `#` comment lines skipped.
- `.jsonl`: one object per line; the prompt is `field` (default "prompt": a string, or a message
  list), else LIMA `conversations` (the first turn), chat `messages`, `prompt`, `instruction`
  or `text`, in that order. A message list is kept up to its last user turn.
- `.json` / `.yaml` / `.yml`: a list whose entries are strings or objects read as JSONL rows are.
- a `datasets` source (a Hub name, a parquet/arrow/json folder, `charter.data.sources`): rows as JSONL rows.

Text is stripped, and a prompt that repeats an earlier one exactly is dropped (it would count
twice in an evaluation, or be trained on twice). A bad entry is one `DataError` naming the file,
its line (or entry) and the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from charter.data.jsonl import DataError, parse_json_or_yaml, read_text_file
from charter.data.sources import is_dataset, iter_records

FALLBACK_FIELDS = ("conversations", "messages", "prompt", "instruction", "text")
STRUCTURED = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def _up_to_last_user(messages: list) -> list[dict] | None:
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages):
        return None
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None or not messages[last]["content"].strip():
        return None
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages[:last + 1]]


def _conversation(value: Any, key: str) -> list[dict] | None:
    """A string, a LIMA turn list or a message list -> the conversation to answer (None if unusable)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value.strip()}] if value.strip() else None
    if not isinstance(value, list) or not value:
        return None
    if key == "conversations":
        return _conversation(value[0], "prompt") if isinstance(value[0], str) else None
    return _up_to_last_user(value)


def _row_conversation(row: dict, field: str, where: str) -> list[dict]:
    key = next((k for k in (field, *FALLBACK_FIELDS) if k in row), None)
    if key is None:
        raise DataError(f"{where}: field '{field}': no user prompt (the row has none of "
                        f"{', '.join(dict.fromkeys((field, *FALLBACK_FIELDS)))})")
    conv = _conversation(row[key], key)
    if conv is None:
        raise DataError(f"{where}: field '{key}': no user prompt (expected a non-empty string or a message "
                        "list with a non-empty user turn)")
    return conv


def _entries(path: Path, field: str) -> Iterator[tuple[str, list[dict]]]:
    """(location, conversation) for every entry of the file, in order."""
    what = f"{field}s: one per line, JSONL {{\"{field}\"}}, or a JSON/YAML list"
    if path.suffix == ".jsonl" or is_dataset(path):  # JSONL, or a `datasets` source (`charter.data.sources`)
        for lineno, row in iter_records(path, what, allow_empty=False):
            yield f"{path}:{lineno}", _row_conversation(row, field, f"{path}:{lineno}")
    elif path.suffix in STRUCTURED:
        data = parse_json_or_yaml(path, read_text_file(path, what), STRUCTURED[path.suffix])
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of {field}s, got {type(data).__name__}")
        for i, entry in enumerate(data):
            where = f"{path}: entry {i}"
            conv = _row_conversation(entry, field, where) if isinstance(entry, dict) else _conversation(entry, field)
            if conv is None:
                raise DataError(f"{where}: expected a non-empty string or an object with '{field}'")
            yield where, conv
    else:
        for lineno, line in enumerate(read_text_file(path, what).splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                yield f"{path}:{lineno}", [{"role": "user", "content": line.strip()}]


def read_conversations(path: str | Path, field: str = "prompt", limit: int | None = None,
                       check: Callable[[str, str], str] | None = None) -> list[list[dict]]:
    """Conversations ending on a user turn, first occurrences only, at most `limit`. `check(text,
    location)` vets every message text (e.g. `check_authored` refuses a `{NAME}` placeholder)."""
    path = Path(path)
    out: list[list[dict]] = []
    seen: set[tuple] = set()
    for where, conv in _entries(path, field):
        if check:
            conv = [{**m, "content": check(m["content"], where)} for m in conv]
        key = tuple((m["role"], m["content"]) for m in conv)
        if key not in seen:
            seen.add(key)
            out.append(conv)
    if not out:
        raise DataError(f"{path}: no {field}s")
    return out[:limit]


def read_texts(path: str | Path, field: str = "prompt", limit: int | None = None,
               check: Callable[[str, str], str] | None = None) -> list[str]:
    """The user turn of each prompt (the last one, for a conversation), by `read_conversations`' rules."""
    texts = [conv[-1]["content"] for conv in read_conversations(path, field, None, check)]
    return list(dict.fromkeys(texts))[:limit]
