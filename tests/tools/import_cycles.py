"""Import cycles between the modules of a package, counting imports inside functions too.

    python -m tests.tools.import_cycles [engine|tuning|dashboard ...]

Reads every ``import`` and ``from ... import`` of the package's modules (module level and inside
functions, relative or absolute), builds the graph of imports between its modules and prints each
strongly connected component of more than one module. Exit status 1 when there is a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def edges(package: str) -> dict[str, set[str]]:
    mods = modules(package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                start = base[: len(base) - (node.level - 1)] if node.level else []
                module = ".".join(start + ([node.module] if node.module else []))
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    status = 0
    for package in (argv if argv is not None else sys.argv[1:]) or ["engine"]:
        graph = edges(package)
        found = cycles(graph)
        print(f"{package}: {len(graph)} modules, {sum(map(len, graph.values()))} imports, "
              f"{'no import cycle' if not found else f'{len(found)} cycle(s)'}")
        for component in found:
            status = 1
            print("  cycle:", ", ".join(component))
            for module in component:
                print(f"    {module} -> {', '.join(sorted(graph[module] & set(component)))}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
