"""The benchmark scripts stay runnable: gpu_check.sh's CPU smoke path (tiny model, bf16 LoRA DPO,
Charter against TRL) and the parameter count that MFU is computed from."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"dpo +1m +(\w+): +([\d.]+) tokens/s wall +([\d.]+) tokens/CPU-s +peak RSS +(\d+) MiB +MFU ([\d.]+)%")


def test_count_params_counts_tied_embeddings_once(tmp_path):
    from transformers import AutoModelForCausalLM

    from charter.toy.tiny import build_tiny_model_dir

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dpo_vs_trl import count_params

    for tied in (False, True):
        folder = build_tiny_model_dir(tmp_path / f"tied-{tied}", tie_embeddings=tied)
        assert count_params(folder) == AutoModelForCausalLM.from_pretrained(folder).num_parameters()


@pytest.mark.slow
def test_gpu_check_cpu_path_runs_both_trainers():
    env = dict(os.environ, SIZE="1m", DEVICE="cpu", STEPS="2", BATCH="2", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {m[1]: m for m in LINE.finditer(proc.stdout)}
    with_trl = importlib.util.find_spec("trl") is not None
    assert set(runs) == ({"charter", "trl"} if with_trl else {"charter"}), proc.stdout
    for m in runs.values():
        assert float(m[2]) > 0 and float(m[3]) > 0 and int(m[4]) > 0 and float(m[5]) >= 0
    if with_trl:
        ratio = re.search(r"^ratio tokens_per_s=([\d.]+) peak_rss=([\d.]+)$", proc.stdout, re.M)
        cpu_ratio = float(runs["charter"][3]) / float(runs["trl"][3])
        assert ratio and float(ratio[1]) == pytest.approx(cpu_ratio, rel=0.02)


def test_with_template_gives_a_base_model_the_benchmark_template(tmp_path):
    from transformers import AutoTokenizer

    from charter.toy.tiny import build_model, build_tokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dpo_vs_trl import TEMPLATE, with_template

    base = tmp_path / "base"
    build_model(build_tokenizer()).save_pretrained(base)
    build_tokenizer(chat_template=None).save_pretrained(base)
    linked = with_template(tmp_path, base)
    assert linked != base and AutoTokenizer.from_pretrained(linked).chat_template == TEMPLATE
    assert (linked / "model.safetensors").resolve() == (base / "model.safetensors").resolve()
    assert AutoTokenizer.from_pretrained(base).chat_template is None  # the original is untouched
    assert with_template(tmp_path, linked) == linked  # a tokenizer with a template is used as is
