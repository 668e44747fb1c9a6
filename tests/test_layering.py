"""The package's layering: tasks.py -> cli -> steps / fleet / artifacts (and doctor, preflight, pipeline)
-> plan -> checks -> probe -> settings, runner, errors (and the other base modules). A module imports its
own layer or the ones below it, never one above; no import cycles; no step imports doctor; doctor and
preflight draw from the checks layer, not from each other.

Every import counts, module-level and inside functions: a lazy import still ties the modules together.
`python tests/test_layering.py` prints the graph (each module with its layer) and any violation;
`python -m pytest tests/test_layering.py -q -s` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "vllm_provision"
# Cycles known and named, each with its way out; one that is gone must leave this list too.
KNOWN_CYCLES: dict[tuple[str, str], str] = {}   # (a, b) -> why it is tolerated; none today
# Top to bottom; each entry names modules (and packages: "steps" covers steps.*) by their name in the package
# ("" is the package itself). A new module gets a layer here, or the test says it has none.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("tasks", ("tasks", "__main__")),
    ("cli", ("cli",)),
    ("steps", ("steps", "fleet", "artifacts", "pipeline", "diagnostics", "build", "envs", "sources.release",
               "report")),
    ("plan", ("plan",)),
    ("checks", ("checks", "kvcache")),
    ("probe", ("probes",)),
    ("base", ("", "core", "catalog", "sources")),
]


def module_files() -> dict[str, Path]:
    """Module name -> file, for tasks.py and every module of the package."""
    files = {"tasks": ROOT / "tasks.py"}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` is or lies in (`pkg.mod.attr` -> `pkg.mod`)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that `module` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import name`: name may be a submodule or an attribute of pkg
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, known)
            if resolved and resolved != module:
                found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _short(name: str) -> str:
    return name if name == "tasks" else "" if name == PACKAGE else name.removeprefix(f"{PACKAGE}.")


def layer_of(module: str) -> int | None:
    """The index in LAYERS (0 = top) of the module, by its longest matching name; None: no layer."""
    short = _short(module)
    best: tuple[int, int] | None = None          # (length of the matching name, layer index)
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if short == name or (name and short.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    return None if best is None else best[1]


def format_graph(graph: dict[str, set[str]]) -> str:
    shown = lambda name: _short(name) or PACKAGE  # noqa: E731
    layer = lambda name: LAYERS[layer_of(name)][0] if layer_of(name) is not None else "?"  # noqa: E731
    return "\n".join(f"{layer(m):6} {shown(m):24} -> {', '.join(shown(t) for t in sorted(graph[m])) or '-'}"
                      for m in sorted(graph, key=lambda m: (layer_of(m) if layer_of(m) is not None else -1, m)))


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = [f"{m} has no layer: add it to LAYERS in tests/test_layering.py" for m in sorted(graph)
                if layer_of(m) is None]
    for m in sorted(graph):
        for target in sorted(graph[m]):
            low, high = layer_of(m), layer_of(target)
            if low is not None and high is not None and high < low:
                problems.append(f"{m} ({LAYERS[low][0]}) imports {target} ({LAYERS[high][0]}): an upward import")
    return problems


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = {tuple(c) for c in cycles(graph)}
    problems = [f"import cycle: {' <-> '.join(c)}" for c in sorted(found - set(KNOWN_CYCLES))]
    problems += [f"known cycle {' <-> '.join(c)} is gone: remove it from KNOWN_CYCLES" for c in KNOWN_CYCLES
                 if c not in found]
    cli = f"{PACKAGE}.cli"
    problems += [f"{m} imports {cli} (only tasks.py may)" for m in sorted(graph)
                 if m != "tasks" and cli in graph[m]]
    problems += [f"{m} imports {PACKAGE}.diagnostics.doctor (a step must not import the diagnostic tool)"
                 for m in sorted(graph) if m.startswith(f"{PACKAGE}.steps.") and f"{PACKAGE}.diagnostics.doctor" in graph[m]]
    problems += [f"{a} imports {b} (doctor and preflight share the checks layer, not each other)"
                 for a, b in ((f"{PACKAGE}.diagnostics.doctor", f"{PACKAGE}.diagnostics.preflight"),
                                 (f"{PACKAGE}.diagnostics.preflight", f"{PACKAGE}.diagnostics.doctor"))
                 if b in graph.get(a, ())]
    return problems + upward_imports(graph)


def test_layering():
    graph = import_graph()
    print("\n" + format_graph(graph))
    problems = violations(graph)
    assert not problems, "\n".join(problems) + "\n\nimport graph:\n" + format_graph(graph)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import thing\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def g():\n    from .. import a\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    graph = {m: imports_of(m, p, known) for m, p in [("pkg.a", pkg / "a.py"), ("pkg.b", pkg / "b.py"),
                                                     ("pkg.sub.c", pkg / "sub" / "c.py")]}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub.c": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_an_upward_import_and_a_module_without_a_layer_are_named():
    p = PACKAGE
    graph = {f"{p}.probes.host": {f"{p}.checks"}, f"{p}.checks": {f"{p}.probes.host"},
             f"{p}.checks.toolchain": {f"{p}.steps.env"},
             f"{p}.steps.env": {f"{p}.cli"}, f"{p}.novel": set(), "tasks": {f"{p}.cli"}, f"{p}.cli": set()}
    problems = violations(graph)
    assert f"{p}.probes.host (probe) imports {p}.checks (checks): an upward import" in problems
    assert f"{p}.checks.toolchain (checks) imports {p}.steps.env (steps): an upward import" in problems
    assert f"{p}.steps.env imports {p}.cli (only tasks.py may)" in problems
    assert f"{p}.novel has no layer: add it to LAYERS in tests/test_layering.py" in problems
    assert f"import cycle: {p}.checks <-> {p}.probes.host" in problems
    assert not [x for x in problems if x.startswith(("tasks", f"{p}.cli "))]
    assert layer_of(PACKAGE) == layer_of(f"{p}.core.runner") and layer_of(f"{p}.kvcache.judge") == layer_of(f"{p}.checks")


if __name__ == "__main__":
    print(format_graph(import_graph()))
    for problem in violations(import_graph()):
        print(problem)
