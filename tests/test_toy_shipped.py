"""The shipped toy base model: installed by default when the settings match, its weights checked
against their SHA-256, and the build that makes it is deterministic (a short build twice gives
identical bytes), so `charter toy build` can reproduce it."""
from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from charter.toy.model import (BUILD_RECORD, PACKAGED_DIR, WEIGHTS, ToyBuildConfig, build_toy_model, install_packaged,
                               is_built, packaged_model, weights_sha256)

TINY = dict(n_conversations=150, vocab_size=400, hidden_size=32, layers=1, heads=2, intermediate_size=64,
            steps=3, batch_size=4, micro_batch=2)


def test_short_build_is_deterministic(tmp_path):
    cfg = ToyBuildConfig(**TINY)
    a = build_toy_model(cfg, tmp_path / "a", packaged=False)
    b = build_toy_model(cfg, tmp_path / "b", packaged=False)
    assert weights_sha256(a) == weights_sha256(b)
    assert json.loads((a / BUILD_RECORD).read_text())["weights_sha256"] == weights_sha256(a)
    for name in ("tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = build_toy_model(cfg.model_copy(update={"seed": 1}), tmp_path / "c", packaged=False)
    assert weights_sha256(c) != weights_sha256(a)  # the hash does see the weights


def test_shipped_model_is_the_default_and_the_preset_build():
    from charter.run.config import load_run_config

    record = json.loads((PACKAGED_DIR / BUILD_RECORD).read_text())
    assert record["hash"] == ToyBuildConfig().hash() == load_run_config(preset="toy").toy.build.hash()
    assert packaged_model(ToyBuildConfig()) == PACKAGED_DIR
    assert packaged_model(ToyBuildConfig(steps=7)) is None
    assert weights_sha256(PACKAGED_DIR) == record["weights_sha256"]
    assert (PACKAGED_DIR / WEIGHTS).stat().st_size < 8_000_000


def test_default_build_installs_the_shipped_model(tmp_path):
    out = build_toy_model(ToyBuildConfig(), tmp_path / "m")
    assert is_built(out) and weights_sha256(out) == weights_sha256(PACKAGED_DIR)
    assert not list(tmp_path.glob("*.partial"))


def test_corrupted_shipped_weights_are_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PACKAGED_DIR, src)
    data = bytearray((src / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (src / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="SHA-256"):
        install_packaged(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_package_data_ships_the_model():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "toy/pretrained/*" in pyproject["tool"]["setuptools"]["package-data"]["charter"]
