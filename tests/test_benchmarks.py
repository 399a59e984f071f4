"""Every script in benchmarks/ still imports what it uses and parses its arguments, so a refactor
that renames or removes a Charter function cannot break one silently."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


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
