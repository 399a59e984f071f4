"""Typed configs: pydantic models loaded from YAML, then `key=value` overrides.

Every stage's config is a `Config` subclass. Unknown keys are errors (a typo in a
YAML file should fail loudly, not silently fall back to a default).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from charter.data.jsonl import atomic_write_text, read_text_file

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config file or override that cannot be understood; the message says where."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Stable hash of the config's content: the key for stage caching."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value), the value parsed as YAML (so 1e-4, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = node[part]
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = read_text_file(path, "a YAML config file", allow_empty=True)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(cls: type[C], data: dict[str, Any], source: str = "<config>") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid {cls.__name__}"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Preset/base dict <- YAML file <- key=value overrides, validated into `cls`."""
    data: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    if path is not None:
        deep_update(data, read_yaml(path))
    apply_overrides(data, overrides or [])
    return build_config(cls, data, str(path) if path else "<overrides>")


def deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Merge `src` into `dst`, section by section (a later layer changes only the keys it names)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v
