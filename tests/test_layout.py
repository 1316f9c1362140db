"""The layout holds: the import-linter contracts pass and no module is part of an import cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def test_no_import_cycle_between_modules():
    """Function-level imports count too (grimp reads every import statement of a module)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("paint")
    assert _import_cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, d alone
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _import_cycles(Graph()) == [["a", "b", "c"]]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


MAX_LOCAL_PAINT_IMPORTS = 40


def function_local_imports(source: str, package: str = "paint") -> list[tuple[int, str]]:
    """(line, text) of every import of ``package``'s own modules made inside a function body."""
    tree = ast.parse(source)
    lines = source.split("\n")
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package:
                out.append((node.lineno, "\n".join(lines[node.lineno - 1 : node.end_lineno])))
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == package for a in node.names):
                out.append((node.lineno, "\n".join(lines[node.lineno - 1 : node.end_lineno])))
    return sorted(set(out))


def test_function_local_imports_of_paint_are_few_and_say_why():
    """Imports sit at the top; a function-local import of paint's own modules carries ``# lazy: <why>``."""
    found = []
    for path in sorted((ROOT / "src" / "paint").rglob("*.py")):
        for line, text in function_local_imports(path.read_text()):
            found.append((f"{path.relative_to(ROOT)}:{line}", text))
    unexplained = [where for where, text in found if "# lazy:" not in text]
    assert not unexplained, f"function-local imports without a `# lazy: <why>` comment: {unexplained}"
    assert len(found) < MAX_LOCAL_PAINT_IMPORTS, [where for where, _ in found]


def test_local_import_finder_sees_nested_and_multiline_imports():
    src = (
        "import paint\n"
        "def f():\n"
        "    from paint.x import (\n        a,\n    )  # lazy: a reason\n"
        "    def g():\n        import paint.y\n"
        "    import json\n"
    )
    found = function_local_imports(src)
    assert [line for line, _ in found] == [3, 7]
    assert "# lazy:" in found[0][1] and "# lazy:" not in found[1][1]
