"""Where each stage's data and model live in a run directory: the one module that knows.

    base/model.json                    the student's base model (a toy build, or the id as given)
    prompts/<persona>/prompts.jsonl    training prompts (expansion.jsonl: the resumable store)
    teacher|student/<persona>/answers.jsonl
    pairs/<persona>/pairs.jsonl        DPO pairs
    rm/<persona>/model/                PPO's reward model, when the run trains one (train|heldout.jsonl beside it)
    dpo|sft|merge/<persona>/model/     model folders (metrics.jsonl inside for trained ones)
    reflection|interaction/<persona>/<kind>.jsonl
    filter/<persona>/sft.jsonl         SFT rows (+ kept, rejected, filter_report.json)
    eval/replies.jsonl                 one scored reply per (persona, system, prompt)
    report/summary.json, report.html   (copied to the run directory's top)

The stages, the report and `charter chat RUN` all ask this module, so a model folder travels
between stages as a place in the layout, not as a value passed along in a record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.config import ConfigError

MANIFEST = "manifest.json"
MODEL_STAGES = ["merge", "sft", "dpo", "base"]  # the stages that leave a model, latest first


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest (every stage's status, key, seconds); `{"stages": {}}` before its first stage."""
    path = run_dir / MANIFEST
    if not path.exists():
        return {"stages": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: corrupt manifest ({e.msg}); delete it to start the run afresh") from None
    data.setdefault("stages", {})
    return data


@dataclass(frozen=True)
class RunLayout:
    root: Path
    readable: frozenset[str] | None = None  # stages this reader declared as inputs (None = all)

    @classmethod
    def of_stage(cls, ctx) -> "RunLayout":
        """A stage's view (`ctx`: an engine `StageContext`): readable only where it declared its inputs."""
        return cls(ctx.run_dir, frozenset([*ctx.inputs, ctx.name]))

    def stage(self, name: str) -> Path:
        if self.readable is not None and name not in self.readable:
            raise KeyError(f"stage {name!r} is not among this stage's declared inputs {sorted(self.readable)}")
        return self.root / name

    def persona_dir(self, stage: str, persona: str) -> Path:
        return self.stage(stage) / persona

    def base_record(self) -> Path:
        return self.stage("base") / "model.json"

    def base_model(self) -> str:
        return json.loads(self.base_record().read_text())["path"]

    def prompts(self, persona: str) -> Path:
        return self.persona_dir("prompts", persona) / "prompts.jsonl"

    def answers(self, role: str, persona: str) -> Path:
        return self.persona_dir(role, persona) / "answers.jsonl"

    def pairs(self, persona: str) -> Path:
        return self.persona_dir("pairs", persona) / "pairs.jsonl"

    def records(self, kind: str, persona: str) -> Path:
        return self.persona_dir(kind, persona) / f"{kind}.jsonl"

    def sft_rows(self, persona: str) -> Path:
        return self.persona_dir("filter", persona) / "sft.jsonl"

    def filter_report(self, persona: str) -> Path:
        return self.persona_dir("filter", persona) / "filter_report.json"

    def model(self, stage: str, persona: str) -> str:
        """The model a stage left for `persona`: the base model's path or id, else `<stage>/<persona>/model`."""
        return self.base_model() if stage == "base" else str(self.persona_dir(stage, persona) / "model")

    def metrics(self, stage: str, persona: str) -> Path:
        return self.persona_dir(stage, persona) / "model" / "metrics.jsonl"

    def replies(self) -> Path:
        return self.stage("eval") / "replies.jsonl"

    def heldout(self) -> Path:
        return self.stage("eval") / "heldout.json"

    def suite(self) -> Path:
        return self.stage("eval") / "suite.json"

    def classifier(self) -> Path:
        return self.stage("eval") / "classifier"

    def personas(self, stage: str) -> list[str]:
        """Personas with a finished folder in `stage` (each persona's `done.json`)."""
        return sorted(p.parent.name for p in self.stage(stage).glob("*/done.json"))

    def finished_stages(self) -> list[str]:
        return [s for s, rec in load_manifest(self.root)["stages"].items() if rec.get("status") == "done"]


def model_in_run(root: str | Path, stage: str | None = None, persona: str | None = None) -> str:
    """`charter chat RUN`: the chosen stage's model (default: the latest finished), first persona by default."""
    layout = RunLayout(Path(root))
    done = [s for s in MODEL_STAGES if s in layout.finished_stages()]
    if stage is None:
        if not done:
            raise ConfigError(f"{root}: no stage with a model has finished yet")
        stage = done[0]
    if stage not in done:
        raise ConfigError(f"{root}: stage {stage!r} has no finished model (finished: {', '.join(done) or 'none'})")
    if stage == "base":
        return layout.base_model()
    personas = layout.personas(stage)
    persona = persona or personas[0]
    if persona not in personas:
        raise ConfigError(f"{root}: no persona {persona!r} in stage {stage} (have: {', '.join(personas)})")
    return layout.model(stage, persona)
