"""Every script in benchmarks/ still imports what it uses and parses its arguments, so a refactor
that renames or removes a Charter function cannot break one silently; gpu_check.sh's CPU smoke
path (tiny model, LoRA DPO, Charter against TRL) runs, and the parameter count MFU uses is right."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
LINE = re.compile(r"dpo +1m +(\w+): +([\d.]+) tokens/s wall +([\d.]+) tokens/CPU-s +peak RSS +(\d+) MiB +MFU ([\d.]+)%")


def charter_imports(script: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every `charter` import, including those inside functions (run lazily)."""
    found = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "charter":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "charter"]
    return found


def unresolved(script: Path) -> list[str]:
    missing = []
    for lineno, module, name in charter_imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{script.name}:{lineno}: {module} ({e})")
            continue
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{script.name}:{lineno}: {module}.{name}")
    return missing


def test_benchmarks_found():
    assert {"dpo_vs_trl.py", "sft_vs_trl.py", "toy_build_throughput.py"} <= {p.name for p in SCRIPTS}


def test_import_check_catches_a_removed_name(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("def f():\n    from charter.train.data import read_sft, load_sft\n")
    assert unresolved(script) == ["old.py:2: charter.train.data.load_sft"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_charter_imports_resolve(script):
    assert unresolved(script) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_exits_zero(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")


def test_count_params_counts_tied_embeddings_once(tmp_path):
    from transformers import AutoModelForCausalLM

    from charter.tiny import build_tiny_model_dir

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

    from charter.tiny import build_model, build_tokenizer

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


@pytest.mark.parametrize("method", ["grpo", "ppo", "sdft"])
def test_toy_methods_trains_with_the_toy_presets_section(method):
    """One source of settings: the method table trains what `charter run --preset toy method=...` trains;
    only what the script fills in itself (paths, seed, one CPU thread, no resume) may differ."""
    from charter.run.config import load_run_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from toy_methods import method_config

    common = dict(model="BASE", data="prompts.jsonl", output_dir="out", seed=3, resume=False, cpu_threads=1,
                  assistant_name="Pip")
    script = method_config(method, "warm", common, []).model_dump()
    preset = getattr(load_run_config(preset="toy"), method).model_dump()
    if method in ("grpo", "ppo"):
        assert script["reward"]["persona"] == "warm"  # the persona its judge rewards
        preset["reward"]["persona"] = "warm"
    differs = {k for k in preset if script[k] != preset[k]}
    assert differs <= {"cpu_threads", "resume"}
    assert method_config(method, "warm", common, ["lr=0.5"]).lr == 0.5
