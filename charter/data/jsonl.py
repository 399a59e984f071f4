"""JSONL io: atomic writes, strict reads with file:line errors, and a resumable record store.

Long generation jobs append one record per line, keyed by a stable id. A job killed
mid-write (even `kill -9`) leaves at most one partial last line; `RecordStore` drops
it on open, so a re-run continues with no duplicated and no lost records.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from charter.faults import disk_full


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise disk_full(path, e) or e from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and disk_full(path, e):  # the old file is untouched: say so in one line
            raise disk_full(path, e) from None
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


JSONL = "JSONL with one object per line"


def check_file(path: str | Path, what: str) -> Path:
    """A user-named input must be an existing file: say which it is not, and what was expected."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected {what}")
    if not path.exists():
        raise DataError(f"{path}: no such file; expected {what}")
    return path


def _not_utf8(path: Path, lineno: int, e: UnicodeDecodeError, what: str) -> DataError:
    return DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); expected {what}")


def read_text_file(path: str | Path, what: str, allow_empty: bool = False) -> str:
    """The text of a user-named file. A missing path, a folder, an unreadable file, bytes that are not
    UTF-8 or (unless `allow_empty`) a blank file are a DataError naming the path (and line) and `what`."""
    path = check_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as e:  # e.g. no read permission
        raise DataError(f"{path}: cannot read ({e.strerror}); expected {what}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data.count(b"\n", 0, e.start) + 1, e, what) from None
    if not allow_empty and not text.strip():
        raise DataError(f"{path}: empty file; expected {what}")
    return text


def iter_jsonl(path: str | Path, what: str = JSONL, allow_empty: bool = True,
               bad_lines: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object); a line that is not a JSON object is a DataError naming file:line,
    or with `bad_lines`, its message is appended there and the line skipped (to list every problem).

    The file checks run at the call, before the first row: a missing file or a folder fails at once.
    Bytes that are not UTF-8 always fail: that is the wrong file, not a bad row. User inputs pass
    `allow_empty=False`, so a file with no records fails instead of training on nothing.
    """
    path = check_file(path, what)
    return _jsonl_rows(path, what, allow_empty, bad_lines)


def _jsonl_rows(path: Path, what: str, allow_empty: bool, bad_lines: list[str] | None
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    count = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, lineno, e, what) from None
            if not line.strip():
                continue
            try:
                obj = _json_object(path, lineno, line)
            except DataError as e:
                if bad_lines is None:
                    raise
                bad_lines.append(str(e))
                continue
            count += 1
            yield lineno, obj
    if not count and not bad_lines and not allow_empty:
        raise DataError(f"{path}: no records; expected {what}")


def _json_object(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def read_records(path: str | Path, key: str = "id") -> list[dict[str, Any]]:
    """A keyed records file, each id once: a repeated id (two writers, a copied-in file) is dropped,
    keeping the first, and reported on stderr, so nothing downstream counts a record twice."""
    records, repeats = _unique_records(Path(path), key)
    if repeats:
        warn(f"{path}: dropped {repeats} record(s) whose {key!r} was already in the file (first kept)")
    return list(records.values())


def _unique_records(path: Path, key: str) -> tuple[dict[str, dict[str, Any]], int]:
    records: dict[str, dict[str, Any]] = {}
    repeats = 0
    for lineno, obj in iter_jsonl(path):
        if key not in obj:
            raise DataError(f"{path}:{lineno}: record has no {key!r} field")
        if obj[key] in records:
            repeats += 1
        else:
            records[obj[key]] = obj
    return records, repeats


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def parse_json_or_yaml(path: str | Path, text: str, fmt: str) -> Any:
    """`fmt` "json" or "yaml" text -> data; a syntax error is a DataError naming the file and line."""
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


def canonical_prompt(text: str) -> str:
    """Case and spacing folded: two prompts that differ only there are the same prompt."""
    return " ".join(text.lower().split())


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class RecordStore:
    """Append-only JSONL keyed by `id`, safe to resume.

    On open it repairs a torn last line (and says so), loads the ids already written,
    dropping repeats, and `add` skips ids it has. Each record is written whole and
    fsynced, so a killed job loses at most the record in flight; a write that fails
    (a full disk) is cut back off, so the file never ends in half a record.
    """

    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = _repair_tail(self.path)
        self.repaired = torn is not None
        if torn is not None:
            warn(f"{self.path}:{torn}: removed a torn last record (cut off by a crash or a copy); "
                 "it is generated again")
        self.records: dict[str, dict[str, Any]] = {}
        self.repeats = 0
        if self.path.exists():
            self.records, self.repeats = _unique_records(self.path, key)
        if self.repeats:  # rewritten with each id once, so later readers see each record once
            write_jsonl(self.path, self.records.values())
            warn(f"{self.path}: dropped {self.repeats} record(s) whose {key!r} was already stored (first kept)")
        self._f = self.path.open("ab", buffering=0)  # each record goes to the file whole, or not at all

    def __contains__(self, rid: str) -> bool:
        return rid in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: dict[str, Any]) -> bool:
        """Append unless the id is already stored; returns whether it was written."""
        rid = record[self.key]
        if rid in self.records:
            return False
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        end = self._f.seek(0, os.SEEK_END)
        written = 0
        try:
            while written < len(line):
                written += self._f.write(line[written:])
            os.fsync(self._f.fileno())
        except OSError as e:
            self._f.truncate(end)  # no half record left behind
            raise disk_full(self.path, e) or e from None
        self.records[rid] = record
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _repair_tail(path: Path) -> int | None:
    """Truncate a last line that has no newline or does not parse (a write cut by a kill);
    returns its line number, or None when the file ends in a whole record."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    if data.endswith(b"\n"):
        last = data[:-1].rsplit(b"\n", 1)[-1]
        try:
            json.loads(last)
            return None
        except json.JSONDecodeError:
            cut = len(data) - len(last) - 1
    else:
        cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)
    return data.count(b"\n", 0, cut) + 1
