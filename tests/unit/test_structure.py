"""The package's shape: no import circles between modules or between packages, and the
commands that only read the store never import torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainlab

SRC = Path(trainlab.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             mods: dict[str, Path]) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module if is_package else module.rpartition(".")[0]
        if node.level:
            base = ".".join(base.split(".")[: len(base.split(".")) - (node.level - 1)])
            full = f"{base}.{node.module}" if node.module else base
        else:
            full = node.module or ""
        names = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full for a in node.names]
    found = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = name.split(".")
            found += [".".join(parts[:i]) for i in range(2, len(parts))]
    return found


def import_graph() -> dict[str, set[str]]:
    """Every trainlab module's imports of other trainlab modules, at any depth in the file
    (an import inside a function is still a dependency); ``if TYPE_CHECKING:`` blocks and a
    module's own package (``a.b`` importing ``a``) are left out."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def visit(module: str, is_package: bool, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                graph[module].update(t for t in _targets(module, is_package, child, mods)
                                     if t != module and not module.startswith(t + "."))
            visit(module, is_package, child)

    for module, path in mods.items():
        visit(module, path.name == "__init__.py", ast.parse(path.read_text()))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded to trainlab's top-level packages and modules."""
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folded.setdefault(top(module), set()).update(
            top(t) for t in targets if top(t) != top(module) and t != "trainlab")
    return folded


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions_and_relative_imports() -> None:
    graph = import_graph()
    assert "trainlab.store" in graph["trainlab.cli.common"]  # imported inside a function
    assert "trainlab.components.finetune.base" in graph["trainlab.components.finetune.full"]


def test_no_import_circle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_import_circle_between_packages() -> None:
    assert cycles(package_graph(import_graph())) == []


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one finished run with metrics, written without the engine."""
    from trainlab.records import MetricRecord
    from trainlab.store import open_store

    root = tmp_path_factory.mktemp("store")
    with open_store(root) as store:
        store.register_sweep("quick", {"name": "quick"}, ["model.hidden_dim"], [
            ("abc123def456", 0, {"model.hidden_dim": 8}, {"model": {"hidden_dim": 8}})])
        assert store.start_run("abc123def456", {"host": "test"})
        store.write([MetricRecord("abc123def456", "valid/loss", 10, 1, 0.5, 1.25)])
        store.finish_run("abc123def456", "ok", None, {"test_accuracy": 0.9, "train_time": 1.5,
                                                      "peak_memory_bytes": 2.0**21})
    return root


@pytest.mark.parametrize("command", [["ls"], ["show", "abc123"], ["--help"]])
def test_commands_that_read_the_store_do_not_import_torch(finished_store: Path,
                                                          command: list[str]) -> None:
    args = [*command, "--store", str(finished_store)] if command != ["--help"] else command
    code = ("import sys\nfrom trainlab.cli import app\n"
            f"try:\n    app({args!r})\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch' in sys.modules, 'trainlab.engine' in sys.modules)")
    env = {**os.environ, "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env)
    lines = result.stdout.strip().splitlines()
    assert command == ["--help"] or "abc123def456" in result.stdout, result.stdout
    assert lines and lines[-1] == "False False", result.stdout + result.stderr


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A sweep file and a store in which every run of it is finished (trained here once)."""
    from trainlab.api import run

    root = tmp_path_factory.mktemp("sweep")
    config = root / "tiny.yaml"
    config.write_text("name: tiny\n"
                      "data: {name: digits, limit: 64, batch_size: 32}\n"
                      "model: {name: mlp, hidden_dim: 8}\n"
                      "train: {epochs: 1, seed: 0}\n"
                      "grid: {model.hidden_dim: [8, 16]}\n")
    result = run(config, store=root / "store", estimate=False)
    assert [o.status for o in result.outcomes] == ["ok", "ok"]
    return config, root / "store"


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_finished_sweep_reruns_and_plans_without_torch(finished_sweep: tuple[Path, Path],
                                                         command: str) -> None:
    """Rerunning or planning a sweep whose runs are all done reads the store and the config
    only: no component builds, no engine, no torch (the no-op rerun costs a Python start-up
    and pandas)."""
    config, store = finished_sweep
    args = [command, str(config), "--store", str(store)]
    code = ("import sys\nfrom trainlab.cli import app\n"
            f"try:\n    app({args!r})\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch' in sys.modules, 'trainlab.engine.loop' in sys.modules)")
    env = {**os.environ, "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env)
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1] == "False False", result.stdout + result.stderr
    if command == "run":
        assert "2 runs, 0 to train, 2 already done" in result.stderr, result.stderr
    else:
        assert "2 runs, 0 to do" in result.stdout, result.stdout
        assert result.stdout.count(" skip ") == 2, result.stdout
