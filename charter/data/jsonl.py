"""JSONL io: atomic writes, strict reads with file:line errors, and a resumable record store.

Long generation jobs append one record per line, keyed by a stable id. A job killed
mid-write (even `kill -9`) leaves at most one partial last line; `RecordStore` drops
it on open, so a re-run continues with no duplicated and no lost records.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object); a line that is not a JSON object is a DataError naming file:line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def parse_json_or_yaml(path: str | Path, text: str, fmt: str) -> Any:
    """`fmt` "json" or "yaml" text -> data; a syntax error is a DataError naming the file and line."""
    import yaml

    try:
        return json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "top level"
        raise DataError(f"{path}: {where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None


def stable_id(*parts: Any) -> str:
    """A short content hash: the same inputs give the same id in every run."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class RecordStore:
    """Append-only JSONL keyed by `id`, safe to resume.

    On open it repairs a torn last line, loads the ids already written, and `add`
    skips ids it has. Each record is flushed and fsynced, so a killed job loses at
    most the record in flight.
    """

    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = _repair_tail(self.path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for lineno, obj in iter_jsonl(self.path):
                if key not in obj:
                    raise DataError(f"{self.path}:{lineno}: record has no {key!r} field")
                self.records.setdefault(obj[key], obj)
        self._f = self.path.open("a", encoding="utf-8")

    def __contains__(self, rid: str) -> bool:
        return rid in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: dict[str, Any]) -> bool:
        """Append unless the id is already stored; returns whether it was written."""
        rid = record[self.key]
        if rid in self.records:
            return False
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records[rid] = record
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _repair_tail(path: Path) -> bool:
    """Truncate a last line that has no newline or does not parse (a write cut by a kill)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        last = data[:-1].rsplit(b"\n", 1)[-1]
        try:
            json.loads(last)
            return False
        except json.JSONDecodeError:
            cut = len(data) - len(last) - 1
    else:
        cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)
    return True
