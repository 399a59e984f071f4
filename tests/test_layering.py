"""Charter's layers, checked on the source: no import cycles, and no lower layer importing a higher one.

Every `import` counts, at module top or inside a function, since a deferred import is still a
dependency. The direction: `data` and `constitution_prompt` sit below `train`, `stages`, `evaluate`
and `toy`; `toy` is a world that plugs into the generic `evaluate` (`charter.evaluate.base.World`).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charter"

# package (or module) -> packages it must never import
FORBIDDEN = {
    "charter.data": ("charter.train", "charter.stages", "charter.evaluate", "charter.toy", "charter.cai"),
    "charter.evaluate": ("charter.toy", "charter.stages", "charter.train", "charter.run", "charter.report",
                         "charter.commands"),
    "charter.toy": ("charter.stages", "charter.run", "charter.commands"),
    "charter.stages": ("charter.run", "charter.report", "charter.commands"),
    "charter.constitution_prompt": ("charter.stages",),
    "charter.train": ("charter.stages", "charter.evaluate", "charter.toy", "charter.run", "charter.commands"),
    "charter.backends": ("charter.train", "charter.stages", "charter.evaluate", "charter.toy"),
    "charter.models": ("charter.train", "charter.backends", "charter.stages", "charter.evaluate"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every charter module `path` imports, relative imports resolved."""
    name, out = _module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("charter")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(path):
            while target and target not in modules:  # `from charter.x import name` -> charter.x
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {t}" for m, targets in graph.items() for t in sorted(targets)
            for low, high in FORBIDDEN.items() if _inside(m, low) for h in high if _inside(t, h)]


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if one exists (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules; a package's `__init__` re-exporting its own modules is not one."""
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    plain = {m: {t for t in ts if t not in packages} for m, ts in graph.items() if m not in packages}
    return [c for c in (_cycle_from(plain, m) for m in sorted(plain)) if c]


def test_no_layer_imports_a_higher_one():
    assert _violations(_graph()) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_checks_can_fail():
    """A lower layer importing a higher one, and a two-module cycle, are both reported."""
    graph = _graph()
    graph["charter.data.fake"] = {"charter.train.loop"}
    graph["charter.evaluate.fake"] = {"charter.toy.fake"}
    assert _violations(graph) == ["charter.data.fake imports charter.train.loop",
                                  "charter.evaluate.fake imports charter.toy.fake"]
    graph["charter.toy.fake"] = {"charter.evaluate.fake"}
    assert ["charter.evaluate.fake", "charter.toy.fake", "charter.evaluate.fake"] in _cycles(graph)


def test_one_module_knows_what_an_adapter_folder_is():
    """"Which base plus which adapters?" has one answer, `charter.models`: nothing else spells the
    adapter config's file name (the rest asks `is_adapter`, `resolve_model`, `read_adapter_config`)."""
    spelled = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
               if '"adapter_config.json"' in p.read_text()]
    assert spelled == ["charter/models.py"]


def test_is_adapter(tmp_path):
    from charter.models import ADAPTER_CONFIG, is_adapter

    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / ADAPTER_CONFIG).write_text("{}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    assert is_adapter(tmp_path / "lora") and is_adapter(str(tmp_path / "lora")) and not is_adapter(tmp_path / "full")


def test_the_command_line_starts_without_the_heavy_libraries():
    """`charter --help` imports every command module, and configs import `backends`, `models` and
    `toy.model`: the imports deferred for start-up (docs/architecture.md, "Deferred imports") keep
    torch, transformers, accelerate, peft, numpy, httpx and huggingface_hub's Hub client out of
    that start."""
    import subprocess
    import sys

    heavy = {"torch", "transformers", "accelerate", "peft", "numpy", "httpx", "huggingface_hub.file_download"}
    code = ("import sys, charter.cli, charter.backends, charter.models, charter.toy.model; "
            f"print(sorted({heavy!r} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
