"""Is a finished stage's output still what the stage wrote? Checked cheaply on every plan.

At a stage's end the manifest records its output hash and a table of its files: size, mtime
and a content fingerprint each (files over 64 MiB, model shards, are fingerprinted by size,
head and tail rather than read whole). On a later run a file whose size and mtime match the
table is trusted without being read; one whose mtime changed is hashed again; a missing,
extra or resized file (a truncated `model.safetensors`) fails the check at once, and the
stage re-runs instead of a later stage crashing on it. Hidden files (`.name`) are not outputs,
and neither are model cards (`README.md`): they describe an output, and the report rewrites them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from charter.data.jsonl import file_hash

FULL_HASH_LIMIT = 64 << 20  # larger files are fingerprinted by size + head/tail, not read whole
_EDGE = 1 << 20


def _files(path: Path) -> dict[str, Path]:
    return {str(p.relative_to(path)): p for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name != "README.md"}


def fingerprint(p: Path, size: int) -> bytes:
    """A file's content fingerprint, as `dir_hash` folds it in."""
    if size <= FULL_HASH_LIMIT:
        return file_hash(p).encode()
    with p.open("rb") as f:
        head = f.read(_EDGE)
        f.seek(size - _EDGE)
        tail = f.read()
    return f"{size}".encode() + hashlib.sha256(head + tail).digest()


def file_table(path: Path) -> dict[str, list[Any]]:
    """relative path -> [size, mtime_ns, fingerprint hex] for every output file under `path`."""
    table = {}
    for rel, p in _files(path).items():
        st = p.stat()
        table[rel] = [st.st_size, st.st_mtime_ns, fingerprint(p, st.st_size).hex()]
    return table


def _hash_of_table(table: dict[str, list[Any]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(table, key=lambda r: Path(r).parts):  # the order dir_hash always used
        h.update(rel.encode() + b"\0" + bytes.fromhex(table[rel][2]))
    return h.hexdigest()[:16]


def dir_hash(path: Path) -> str:
    """Hash of every output file's relative path and content fingerprint under `path`."""
    return _hash_of_table(file_table(Path(path)))


def output_record(out: Path) -> dict[str, Any]:
    """What the manifest keeps of a finished stage's output: its hash and its file table."""
    table = file_table(out)
    return {"output_hash": _hash_of_table(table), "files": table}


def outputs_intact(out: Path, rec: dict[str, Any]) -> bool:
    """Does `out` still hold what the stage wrote (per its manifest record `rec`)?"""
    if not out.exists():
        return False
    table = rec.get("files")
    if table is None:  # a manifest from before file tables: hash everything
        return dir_hash(out) == rec.get("output_hash")
    files = _files(out)
    if set(files) != set(table):
        return False
    for rel, p in files.items():
        size, mtime_ns, fp = table[rel]
        st = p.stat()
        if st.st_size != size:
            return False
        if st.st_mtime_ns != mtime_ns and fingerprint(p, size).hex() != fp:
            return False
    return True
