"""The `charter run` engine: a small explicit stage graph, cached and resumable in one run directory.

A `Stage` is a name, the upstream stages it reads, a function building the settings
object it reads from the run config, and a function `(ctx) -> counts` that gets exactly
that settings object as `ctx.settings`. Each stage writes only under `run_dir/<name>/`.
Its cache key is a hash of its settings (`model_dump()`), the seed and its inputs'
output hashes, so a key cannot drift from what the stage reads, and:

- a finished stage whose key is unchanged (and whose files are intact) is skipped;
- a changed setting or a changed upstream output re-runs it, and the new
  output hash then changes every stage downstream of it;
- a stage that was interrupted ("running" in the manifest, same key) is simply
  called again: stage functions append keyed records and skip what they have;
- a stage whose key changed starts from an empty folder, so stale partial records
  from another config can never be "resumed" into the new one.

`manifest.json` records the config, its hash, package versions, the seed, and per
stage its key, counts, timings and output hash. The graph itself knows nothing about
models; `charter.run.stages` wires the real stage functions into it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from charter.config import ConfigError
from charter.data.jsonl import atomic_write_json
from charter.integrity import output_record, outputs_intact
from charter.run.layout import MANIFEST, load_manifest


@dataclass
class StageContext:
    """What a stage function gets: its settings, its own output folder and its inputs' folders."""

    name: str
    settings: Any
    run_dir: Path
    out_dir: Path
    seed: int
    inputs: dict[str, Path]

    def input_dir(self, stage: str) -> Path:
        if stage not in self.inputs:
            raise KeyError(f"stage {self.name!r} did not declare {stage!r} as an input")
        return self.inputs[stage]


@dataclass
class Stage:
    name: str
    fn: Callable[[StageContext], dict[str, Any] | None]
    inputs: list[str] = field(default_factory=list)
    settings: Callable[[Any], Any] = lambda cfg: None  # what the stage reads; a change re-runs it


@dataclass
class PlanItem:
    stage: str
    action: str  # "run" | "resume" | "cached" | "skip"
    reason: str
    forced: bool = False  # --from/--only: run even when its key is unchanged


# ---------------------------------------------------------------- hashing

def _json_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _config_part(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def settings_hash(stage: Stage, cfg: Any) -> str:
    return _json_hash(_config_part(stage.settings(cfg)))


def stage_key(stage: Stage, cfg: Any, seed: int, input_hashes: dict[str, str]) -> str:
    return _json_hash({"stage": stage.name, "settings": settings_hash(stage, cfg),
                       "seed": seed, "inputs": input_hashes})


# ---------------------------------------------------------------- manifest

def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("charter", "torch", "transformers", "trl", "peft", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the graph

class Pipeline:
    """An ordered list of stages (each stage's inputs must come before it)."""

    def __init__(self, stages: list[Stage]):
        seen: set[str] = set()
        for s in stages:
            missing = [i for i in s.inputs if i not in seen]
            if missing:
                raise ValueError(f"stage {s.name!r} reads {missing} which do not come before it")
            if s.name in seen:
                raise ValueError(f"duplicate stage {s.name!r}")
            seen.add(s.name)
        self.stages = stages
        self.by_name = {s.name: s for s in stages}

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def _check(self, name: str | None, flag: str) -> None:
        if name is not None and name not in self.by_name:
            raise ConfigError(f"{flag} {name!r}: unknown stage (stages: {', '.join(self.names())})")

    def plan(self, cfg: Any, run_dir: Path, seed: int, start: str | None = None,
             only: str | None = None) -> list[PlanItem]:
        """What `run` would do, without running anything (this is `--dry-run`)."""
        self._check(start, "--from")
        self._check(only, "--only")
        manifest = load_manifest(run_dir)
        items: list[PlanItem] = []
        reruns: set[str] = set()
        forced_from = self.names().index(start) if start else None
        for i, s in enumerate(self.stages):
            if only is not None and s.name != only:
                ok = manifest["stages"].get(s.name, {}).get("status") == "done"
                items.append(PlanItem(s.name, "skip", "--only " + only + ("" if ok else " (not run yet)")))
                continue
            action, reason = self._decide(s, cfg, run_dir, seed, manifest, reruns)
            forced = False
            if forced_from is not None and i >= forced_from and action == "cached":
                action, reason, forced = "run", f"--from {start}", True
            if only is not None:
                missing = [u for u in s.inputs if manifest["stages"].get(u, {}).get("status") != "done"]
                if missing:
                    raise ConfigError(f"--only {only}: its inputs {missing} have not finished; run them first")
                if action == "cached":
                    action, reason, forced = "run", f"--only {only}", True
            if action != "cached":
                reruns.add(s.name)
            items.append(PlanItem(s.name, action, reason, forced))
        return items

    def _decide(self, s: Stage, cfg: Any, run_dir: Path, seed: int, manifest: dict[str, Any],
                reruns: set[str]) -> tuple[str, str]:
        rec = manifest["stages"].get(s.name)
        changed_up = [u for u in s.inputs if u in reruns]
        if rec is None:
            return "run", "not run yet"
        if changed_up:
            return "run", f"upstream {', '.join(changed_up)} re-runs (re-used if its output is unchanged)"
        input_hashes = {u: manifest["stages"][u].get("output_hash") for u in s.inputs}
        key = stage_key(s, cfg, seed, input_hashes)
        if rec.get("key") != key:
            why = "config changed" if rec.get("settings_hash") != settings_hash(s, cfg) \
                else "inputs or seed changed"
            return "run", why
        if rec.get("status") != "done":
            return "resume", "interrupted; resumes from its saved records"
        if not outputs_intact(run_dir / s.name, rec):  # the manifest's file table (charter.integrity)
            return "run", "outputs missing or modified"
        return "cached", "inputs and config unchanged"

    def run(self, cfg: Any, run_dir: str | Path, seed: int, start: str | None = None,
            only: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Run what the plan says, stage by stage, keeping the manifest current after every step."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        plan = {p.stage: p for p in self.plan(cfg, run_dir, seed, start, only)}
        manifest = load_manifest(run_dir)
        manifest.update({"config": _config_part(cfg), "config_hash": _json_hash(_config_part(cfg)),
                         "seed": seed, "versions": package_versions(), "updated": _now()})
        manifest.setdefault("created", _now())
        t_run = time.time()
        n_todo = sum(1 for p in plan.values() if p.action in ("run", "resume"))
        n_done = 0
        for i, s in enumerate(self.stages):
            item = plan[s.name]
            if item.action == "skip":
                continue
            input_hashes = {u: manifest["stages"][u]["output_hash"] for u in s.inputs}
            key = stage_key(s, cfg, seed, input_hashes)
            rec = manifest["stages"].get(s.name, {})
            out = run_dir / s.name
            forced = item.forced
            if (not forced and rec.get("key") == key and rec.get("status") == "done"
                    and outputs_intact(out, rec)):
                log(f"[{i + 1}/{len(self.stages)}] {s.name}: cached")
                continue
            resume = rec.get("key") == key and rec.get("status") == "running" and not forced
            if not resume and out.exists():
                shutil.rmtree(out)  # stale outputs from another key must not be resumed
            out.mkdir(parents=True, exist_ok=True)
            log(f"[{i + 1}/{len(self.stages)}] {s.name}: {'resuming' if resume else 'running'} "
                f"({n_done}/{max(n_todo, 1)} of this run's stages done, {time.time() - t_run:.0f}s elapsed)"
                f" -- {item.reason}")
            manifest["stages"][s.name] = {
                "status": "running", "key": key, "settings_hash": settings_hash(s, cfg),
                "inputs": input_hashes, "started": _now(),
                "resumed": resume, "seconds_before": rec.get("seconds", 0.0) if resume else 0.0}
            atomic_write_json(run_dir / MANIFEST, manifest)
            t0 = time.time()
            ctx = StageContext(s.name, s.settings(cfg), run_dir, out, seed, {u: run_dir / u for u in s.inputs})
            counts = s.fn(ctx) or {}
            srec = manifest["stages"][s.name]
            srec.update({"status": "done", "counts": counts, "finished": _now(),
                         "seconds": round(srec.pop("seconds_before") + time.time() - t0, 2),
                         **output_record(out)})
            atomic_write_json(run_dir / MANIFEST, manifest)
            n_done += 1
        manifest["seconds_total"] = round(time.time() - t_run, 2)
        atomic_write_json(run_dir / MANIFEST, manifest)
        return manifest


def format_plan(items: list[PlanItem]) -> str:
    width = max(len(p.stage) for p in items)
    return "\n".join(f"  {p.stage:<{width}}  {p.action:<7} {p.reason}" for p in items)
