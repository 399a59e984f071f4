"""Data inputs beyond JSONL: a Hugging Face `datasets` name, or a local parquet/arrow/json folder.

Every record input (pairs, SFT rows, prompts, eval files) is read through `iter_records` here:
a JSONL file as before (`iter_jsonl`), and also:

- a Hub dataset id, `org/name` or `org/name:split` (the Hugging Face cache, or the Hub when
  online; split `train` by default);
- a folder written by `Dataset.save_to_disk`, or a folder of `.parquet`/`.arrow`/`.json(l)`/`.csv`
  files (what `datasets.load_dataset(folder)` reads: its `train` split);
- a single `.parquet` or `.arrow` file.

Rows come back as plain dicts with their 0-based index, printed as `row N`, so a bad row's error
reads `org/name:row 12: field 'chosen' ...`, as a JSONL error reads `file.jsonl:13: ...`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from charter.data.jsonl import JSONL, DataError, check_file, file_hash, iter_jsonl

DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".jsonl", ".csv")
SINGLE_FILES = {".parquet": "parquet", ".arrow": "arrow"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")
_TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".yaml", ".yml", ".csv", ".md")


class RowIndex(int):
    """A dataset row's 0-based index; formats as `row N` where JSONL errors put a line number."""

    def __str__(self) -> str:
        return f"row {int(self)}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def is_dataset(spec: str | Path) -> bool:
    """A dataset folder, a parquet/arrow file, or (when no such path exists) a Hub dataset id."""
    path = Path(spec)
    if path.is_dir():
        return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
            or any(f.suffix in DATA_SUFFIXES for f in path.rglob("*") if f.is_file())
    if path.exists():
        return path.suffix in SINGLE_FILES
    text = str(spec)
    return bool(_HUB_ID.match(text)) and not text.split(":")[0].endswith(_TEXT_SUFFIXES)


def is_records(spec: str | Path) -> bool:
    """Whether a prompt-like input is read as records (JSONL or a dataset) rather than as lines of text."""
    return Path(spec).suffix == ".jsonl" or is_dataset(spec)


def load(spec: str | Path):
    """The `datasets.Dataset` a spec names (one split); any failure is one DataError line."""
    import datasets

    path, split = Path(spec), "train"
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), split=split)
        elif path.is_file():
            ds = datasets.load_dataset(SINGLE_FILES[path.suffix], data_files=str(path), split=split)
        else:
            name, _, split = str(spec).partition(":")
            ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        kind = "dataset folder" if path.exists() else "file, folder or Hub dataset (offline: only the cache)"
        raise DataError(f"{spec}: cannot read it as a {kind}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{spec}: no split {split!r}; it has {sorted(ds)}")
        ds = ds[split]
    return ds


def dataset_rows(spec: str | Path, what: str, allow_empty: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """(RowIndex, row) for every row; the dataset is opened at the call, so a bad name fails at once."""
    ds = load(spec)
    if not len(ds) and not allow_empty:
        raise DataError(f"{spec}: no records; expected {what}")
    return ((RowIndex(i), dict(row)) for i, row in enumerate(ds))


def iter_records(spec: str | Path, what: str = JSONL, allow_empty: bool = True,
                 bad_lines: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The one entry point for record inputs: (line number or RowIndex, row) from JSONL or a dataset."""
    if is_dataset(spec):
        return dataset_rows(spec, what, allow_empty)
    return iter_jsonl(spec, what, allow_empty, bad_lines)


def data_hash(spec: str | Path) -> str:
    """Content hash of an input: the file's bytes, or the dataset's own fingerprint."""
    return load(spec)._fingerprint[:16] if is_dataset(spec) else file_hash(spec)


def check_input(spec: str | Path, what: str) -> None:
    """Fail before any model loads: a JSONL file must exist, a dataset must open."""
    if is_dataset(spec):
        load(spec)
    else:
        check_file(spec, what)
