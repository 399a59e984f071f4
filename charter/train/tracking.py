"""Experiment tracking: `report_to: [tensorboard, wandb, trackio]`, as TRL users set it.

Every logged training row goes to each chosen tracker under the names transformers' Trainer
uses there (`train/loss`, `train/rewards/chosen`, ..., `train/global_step`), and the training
config is logged once at the start. Each integration is an optional extra, imported only when
chosen (`pip install -e ".[tensorboard]"`, `[wandb]`, `[trackio]`); a missing one stops with one
line that says what to install. Only the main process tracks.

- tensorboard: event files in `<output_dir>/runs/` (`tensorboard --logdir <output_dir>/runs`).
- wandb: project `$WANDB_PROJECT` (default "charter"); the run folder lives in `<output_dir>/wandb/`.
  `WANDB_MODE=offline` works without an account (`wandb sync` uploads later).
- trackio: project `$TRACKIO_PROJECT` (default "charter"), stored locally by trackio.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import AfterValidator

from charter.config import ConfigError
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
SKIP = ("step", "epoch")  # logged as the step, or under train/epoch below


class MissingIntegration(ConfigError):
    """A tracker was chosen whose package is not installed."""


def check_installed(report_to: list[str]) -> list[str]:
    """Config-time check, so a missing package fails before any model loads."""
    for name in report_to:
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"{name!r} needs the {name} package: pip install -e \".[{EXTRAS[name]}]\" "
                             f"(or pip install {name})")
    return report_to


ReportTo = Annotated[list[Literal["tensorboard", "wandb", "trackio"]], AfterValidator(check_installed)]


def trainer_names(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row -> the names transformers' integrations log: `train/<metric>`, plus epoch and global step."""
    out = {f"train/{k}": float(v) for k, v in row.items()
           if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "epoch" in row:
        out["train/epoch"] = float(row["epoch"])
    return out


def _require(module: str, name: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingIntegration(f"report_to: {name!r} needs the {name} package: "
                                 f"pip install -e \".[{EXTRAS[name]}]\" (or pip install {name})") from None


class TensorBoard:
    def __init__(self, out: Path, config: dict, name: str):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # deferred: optional extra (charter[tensorboard])

        self.writer = SummaryWriter(log_dir=str(out / "runs" / name))
        self.writer.add_text("args", json.dumps(config, indent=2, default=str))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, config: dict, name: str):
        wandb = _require("wandb", "wandb")
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "charter"), name=name, dir=str(out),
                              config=config, reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "train/global_step": step}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Trackio:
    def __init__(self, out: Path, config: dict, name: str):
        self.trackio = _require("trackio", "trackio")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "charter"), name=name, config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log({**metrics, "train/global_step": step}, step=step)

    def finish(self) -> None:
        self.trackio.finish()


INTEGRATIONS = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}


class Trackers:
    """The chosen trackers as one: `log(row, step)` each logged row, `finish()` at the end."""

    def __init__(self, trackers: Sequence[Any] = ()):
        self.trackers = list(trackers)

    def log(self, row: dict[str, Any], step: int) -> None:
        metrics = trainer_names(row)
        for t in self.trackers:
            t.log(metrics, step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def run_name(out: Path, kind: str) -> str:
    """`dpo-<persona>` inside a `charter run` (…/dpo/<persona>/model), else `<kind>-<folder>`."""
    return f"{kind}-{out.parent.name if out.name == 'model' else out.name}"


def start_tracking(report_to: Sequence[str], out: str | Path, config: dict, kind: str,
                   main_process: bool = True) -> Trackers:
    """Open each chosen tracker (none on other processes); the config is logged here, once."""
    if not main_process or not report_to:
        return Trackers()
    out = Path(out)
    return Trackers([INTEGRATIONS[name](out, config, run_name(out, kind)) for name in dict.fromkeys(report_to)])
