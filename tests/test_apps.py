"""The application layer (gpt2_apps): the layering of the whole import graph, the commands' exit statuses and error
lines, and that `gpt2 --help` imports no framework.

Layers, each importing only the ones below it (STYLE.md): gpt2_core <- weights_convert <- gpt2_torch, gpt2_tf,
gpt2_flax (not each other) <- gpt2_apps. Checked on the sources with `ast`, lazy (function-level) imports and
`importlib.import_module("...")` included, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from gpt2_apps.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_command

LAYERS = {"gpt2_core": 0, "weights_convert": 1, "gpt2_torch": 2, "gpt2_tf": 2, "gpt2_flax": 2, "gpt2_apps": 3}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in LAYERS for p in sorted((REPO / package).rglob("*.py"))}


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file, lazy ones and
    `importlib.import_module("literal")` included; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body} | {
        id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try)) for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        at_top = id(node) in top_level
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, at_top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found += [(f"{name}.{alias.name}", node.lineno, at_top) for alias in node.names]  # a submodule or a name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno, at_top))
    return found


def _graph() -> tuple[dict[str, list[tuple[str, int, bool]]], dict[str, Path]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = []
        for target, line, at_top in _imports(path, name):
            if target.split(".")[0] in LAYERS:
                # `from pkg import name`: an edge to the submodule pkg.name if there is one, else to pkg
                if target not in modules and target.rpartition(".")[0] in modules:
                    target = target.rpartition(".")[0]
                edges.append((target, line, at_top))
        graph[name] = edges
    return graph, modules


def test_layers_import_downward_only():
    """No module imports a package of its own layer or above (other than its own package): gpt2_core imports no
    weights_convert, backend or gpt2_apps; weights_convert no backend and no gpt2_apps; a backend no other backend
    and no gpt2_apps."""
    graph, modules = _graph()
    assert {"gpt2_apps.backends", "gpt2_apps.cli", "gpt2_apps.verify", "gpt2_apps.train_cli"} <= set(modules)
    bad = []
    for name, edges in graph.items():
        own = name.split(".")[0]
        for target, line, _ in edges:
            other = target.split(".")[0]
            if other != own and LAYERS[other] >= LAYERS[own]:
                bad.append(f"{modules[name].relative_to(REPO)}:{line} imports {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(set(bad)))


def test_import_graph_has_no_cycles():
    """Module-level imports between first-party modules form no cycle (function-level imports are how a module
    defers a dependency, and are checked by the layering test)."""
    graph, _ = _graph()
    edges = {name: sorted({t for t, _, at_top in targets if at_top and t in graph and t != name}) for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# -- the commands ----------------------------------------------------------------------------------------------------


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_help_imports_no_framework():
    """`gpt2 --help` works with any one framework installed: the CLI modules import no framework themselves."""
    code = (
        "import sys\n"
        "import gpt2_apps.backends, gpt2_apps.cli, gpt2_apps.train_cli, gpt2_apps.verify\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules))\n"
    )
    r = run("-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    r = run("-m", "gpt2_apps.cli", "--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("generate", "convert", "verify", "train")), r.stdout + r.stderr


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_verbose_convert_and_train_report_errors(tmp_path, verbose):
    """`gpt2 -v convert ...` / `gpt2 -v train ...` used to crash with TypeError: 'NoneType' object is not callable.
    Now bad input is one error line and exit 2; -v adds the traceback."""
    flag = ["-v"] if verbose else []
    r = run("-m", "gpt2_apps.cli", *flag, "convert", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), "--no-progress")
    assert r.returncode == EXIT_USAGE and "error" in r.stderr, r.stderr
    assert "NoneType" not in r.stderr and ("Traceback" in r.stderr) == verbose, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("-m", "gpt2_apps.cli", *flag, "train", "--backend", "torch", "--data", str(empty), "-o", str(tmp_path / "o"))
    assert r.returncode == EXIT_USAGE and "holds no text files" in r.stderr, r.stderr
    assert "NoneType" not in r.stderr and ("Traceback" in r.stderr) == verbose, r.stderr


def test_usage_errors_exit_2(tmp_path):
    r = run("-m", "gpt2_apps.cli", "bogus")
    assert r.returncode == EXIT_USAGE and "invalid choice" in r.stderr, r.stderr
    r = run("-m", "gpt2_apps.cli", "--nope", "train")
    assert r.returncode == EXIT_USAGE and "unrecognized arguments" in r.stderr, r.stderr
    r = run("-m", "gpt2_apps.cli", "verify", str(tmp_path / "missing"), "--backends", "torch,mxnet")
    assert r.returncode == EXIT_USAGE and "Received: --backends 'torch,mxnet'" in r.stderr, r.stderr
    r = run("-m", "gpt2_apps.cli", "generate", "--model", str(tmp_path / "nope"), "x")
    assert r.returncode == EXIT_USAGE and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def _raise(error: BaseException):
    def fn():
        raise error

    return fn


@pytest.mark.parametrize(
    "error, status",
    [(ValueError("bad value"), EXIT_USAGE), (FileNotFoundError("no file"), EXIT_USAGE), (RuntimeError("boom"), EXIT_FAILURE),
     (ImportError("no module"), EXIT_FAILURE), (KeyboardInterrupt(), EXIT_INTERRUPTED)],
    ids=["ValueError", "FileNotFoundError", "RuntimeError", "ImportError", "KeyboardInterrupt"],
)
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_exit_status_rule(capsys, error, status, verbose):
    """gpt2_apps.errors: 2 bad input, 1 failure, 130 Ctrl-C; one line on stderr, the traceback only with -v."""
    assert run_command("gpt2 x", _raise(error), verbose) == status
    err = capsys.readouterr().err
    assert err.startswith("gpt2 x: ") and ("Traceback" in err) == verbose, err
    if not verbose:
        assert err.count("\n") == 1, err
    assert run_command("gpt2 x", lambda: None) == EXIT_OK
