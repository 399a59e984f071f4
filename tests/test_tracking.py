"""Experiment tracking through the real libraries: TensorBoard event files parsed back by tensorboard's
own reader, W&B in offline mode writing its run folder, trackio locally (where it installs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.data.jsonl import write_jsonl

LINES = ["the sea is blue.", "cats sleep all day.", "rain falls on the hill.", "bread is warm."]
TRL_NAMES = ["loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
             "rewards/margins", "logps/chosen", "logps/rejected"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, [{"prompt": [{"role": "user", "content": a}], "chosen": [{"role": "assistant", "content": b}],
                        "rejected": [{"role": "assistant", "content": a}]} for a, b in zip(LINES, LINES[1:] + LINES[:1])])
    return path


def _train_dpo(tiny_model_dir, pairs, out, report_to):
    from charter.train.dpo import DPOConfig, train_dpo

    return train_dpo(DPOConfig(model=str(tiny_model_dir), data=str(pairs), output_dir=str(out), lr=1e-2, max_steps=3,
                               batch_size=2, warmup_ratio=0.0, resume=False, report_to=report_to))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_parse_back_with_trl_names(tiny_model_dir, pairs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = _train_dpo(tiny_model_dir, pairs, tmp_path / "dpo", ["tensorboard"])
    [run] = list((out / "runs").iterdir())
    assert run.name == "dpo-dpo"
    events = EventAccumulator(str(run)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {f"train/{k}" for k in TRL_NAMES} | {"train/epoch"} <= scalars
    rows = _metrics(out)
    for name in ("loss", "rewards/margins", "learning_rate"):
        logged = events.Scalars(f"train/{name}")
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx([r[name] for r in rows], rel=1e-5, abs=1e-7)
    assert events.Tags()["tensors"] == ["args/text_summary"]  # the config, logged once
    config = json.loads(events.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode())
    assert config["lr"] == 1e-2 and config["report_to"] == ["tensorboard"]


def test_wandb_offline_writes_its_run_folder(tiny_model_dir, pairs, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = _train_dpo(tiny_model_dir, pairs, tmp_path / "dpo", ["wandb"])
    [run] = list((out / "wandb").glob("offline-run-*"))
    [log] = list(run.glob("run-*.wandb"))
    raw = log.read_bytes()  # wandb's own run file (its records are protobuf: strings appear as bytes)
    for name in ["train/global_step"] + [f"train/{k}" for k in TRL_NAMES]:
        assert name.encode() in raw, name
    assert b"report_to" in raw and b"adam_betas" in raw  # the config, logged at init
    assert (run / "files" / "requirements.txt").exists()


def test_trackio_logs_locally(tiny_model_dir, pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    trackio = pytest.importorskip("trackio", reason="trackio does not install here (see docs/training.md#tracking)")
    monkeypatch.setattr(trackio, "TRACKIO_DIR", tmp_path / "trackio", raising=False)
    out = _train_dpo(tiny_model_dir, pairs, tmp_path / "dpo", ["trackio"])
    stored = [p for p in (tmp_path / "trackio").rglob("*") if p.is_file()]
    assert stored, "trackio wrote nothing locally"
    raw = b"".join(p.read_bytes() for p in stored)
    assert b"train/rewards/accuracies" in raw and str(_metrics(out)[-1]["step"]).encode() in raw


def test_missing_integration_fails_before_training(monkeypatch):
    import importlib.util

    from charter.config import ConfigError, build_config
    from charter.train.sft import SFTConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to.*'wandb' needs the wandb package: pip install"):
        build_config(SFTConfig, {"model": "m", "data": "d", "output_dir": "o", "report_to": ["wandb"]})
    with pytest.raises(ConfigError, match="report_to"):
        build_config(SFTConfig, {"model": "m", "data": "d", "output_dir": "o", "report_to": ["mlflow"]})


def test_charter_run_passes_report_to_every_trainer_outside_the_cache_key(monkeypatch, tmp_path):
    import charter.run.stages as rs
    import charter.run.training as training
    from charter.config import ConfigError
    from charter.run.config import load_run_config
    from charter.run.personas import Run

    pytest.importorskip("tensorboard")
    seen = {}
    monkeypatch.setattr(training, "train_dpo", lambda cfg: seen.setdefault("dpo", cfg))
    monkeypatch.setattr(training, "train_sft", lambda cfg: seen.setdefault("sft", cfg))
    run = Run.of(load_run_config(preset="toy", overrides=["report_to=[tensorboard]"]))
    quiet = Run.of(load_run_config(preset="toy"))
    assert quiet.config.report_to == []  # none by default
    stages = {s.name: s for s in rs.build_pipeline().stages}
    for kind in ("dpo", "sft"):
        settings = stages[kind].settings(run)
        assert settings.report_to == ["tensorboard"]
        assert settings.to_dict() == stages[kind].settings(quiet).to_dict()  # tracking never re-runs a stage
        training.train(settings, kind, getattr(settings, kind), "m", tmp_path / "d.jsonl", tmp_path / kind / "model", 0)
        assert seen[kind].report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="dpo.report_to"):  # the run fills it in, from the top level
        load_run_config(preset="toy", overrides=["dpo.report_to=[tensorboard]"])
