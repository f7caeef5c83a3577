"""Architecture rules: the core imports no pandas/matplotlib/typer (design principle 8)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = ["ckptsim.records", "ckptsim.trace", "ckptsim.cost", "ckptsim.server", "ckptsim.policies",
        "ckptsim.oracle", "ckptsim.sim"]
PACKAGE = Path(__file__).resolve().parents[1] / "ckptsim"


def test_core_imports_no_pandas():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "bad = [m for m in ('pandas', 'matplotlib', 'typer') if m in sys.modules]\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _module_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (deferred imports count)."""
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                root = ".".join(base + ([node.module] if node.module else []))
                names = [root] + [f"{root}.{a.name}" for a in node.names]
            for n in names:
                while n and n not in files:
                    n = n.rpartition(".")[0]
                if n and n != mod and n != "ckptsim":
                    graph[mod].add(n)
    return graph


def test_no_import_cycles():
    """The package's imports form no circle: the oracle plans on the simulator it is handed
    (``Policy.prepare``'s ``replay``) instead of importing it, so the registry can hold it."""
    graph = _module_imports()
    assert "ckptsim.oracle" in graph["ckptsim.policies"]       # the oracle is in the registry
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
