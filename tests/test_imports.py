"""The package's imports run one way: no cycle among its modules, none among its top-level units.

Every ``agq_keras/**/*.py`` and ``configs/*.py`` (installed as ``agq_keras.configs``: setup.py's package-dir
mapping) is parsed with ``ast`` (nothing is imported); every import statement counts,
at module level or inside a function: ``import a.b``, ``from a import b``, relative imports. ``from pkg
import name`` imports the submodule ``pkg.name`` when there is one, else ``pkg`` (its ``__init__``).
The units are the root's children (``agq_keras.quantizers``, ``agq_keras.layers``, ``agq_keras.models``,
``agq_keras.training``, ...); a subpackage's ``__init__`` belongs to its unit. The root
``agq_keras/__init__.py`` is the facade at the top: importing ``agq_keras`` itself is not an edge (Python
runs it before any submodule anyway), but a name taken from it (``from agq_keras import build``) is an
edge to the module the root takes that name from.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "agq_keras"
# the package's folders: (folder in the repository, dotted name of its package) — setup.py's package_dir
FOLDERS = ((PACKAGE, PACKAGE), ("configs", f"{PACKAGE}.configs"))


def modules() -> dict[str, str]:
    """Dotted module name -> file path, for every ``.py`` of the package."""
    found = {}
    for top, dotted in FOLDERS:
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            rel = dotted.split(".") + [p for p in os.path.relpath(folder, os.path.join(ROOT, top)).split(os.sep)
                                       if p != "."]
            for f in sorted(files):
                if f.endswith(".py"):
                    found[".".join(rel if f == "__init__.py" else rel + [f[:-3]])] = os.path.join(folder, f)
    return found


def imported(module: str, path: str, known) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import statement of the file, as raw targets (see the docstring)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else f"{base}:{alias.name}", node.lineno))
    return out


def graph():
    """module -> {imported module: "file:line"} within the package."""
    known = modules()
    # the names the facade re-exports: ``from agq_keras import build`` depends on agq_keras.models
    facade = {}
    for target, _ in imported(PACKAGE, known[PACKAGE], known):
        if ":" in target and not target.startswith(f"{PACKAGE}:"):
            source, name = target.split(":")
            facade[name] = source
    edges = {m: {} for m in known}
    for module, path in known.items():
        for target, line in imported(module, path, known):
            if target.startswith(f"{PACKAGE}:"):
                target = facade.get(target.split(":")[1], PACKAGE)
            target = target.split(":")[0]
            while target not in known and "." in target:  # ``import agq_keras.x.y`` of a name in x
                target = target.rpartition(".")[0]
            if target == PACKAGE or target == module or not target.startswith(f"{PACKAGE}."):
                continue  # the facade itself, the module itself, anything outside the package
            edges[module].setdefault(target, f"{os.path.relpath(path, ROOT)}:{line}")
    return edges


def unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def unit_graph(edges):
    """unit -> {imported unit: "file:line imports module"} (the first import site of each pair)."""
    units = {}
    for module, targets in sorted(edges.items()):
        for target, site in sorted(targets.items()):
            a, b = unit(module), unit(target)
            units.setdefault(a, {})
            units.setdefault(b, {})
            if a != b:
                units[a].setdefault(b, f"{site} imports {target}")
    return units


def cycles(edges) -> list[tuple[list[str], list[str]]]:
    """``(members, one cycle [a, b, ..., a])`` of each strongly connected component with more than one node
    (Tarjan's algorithm; the cycle is a shortest way back to the component's first member)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    found = []
    for comp in comps:
        start = min(comp)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(w for w in edges[path[-1]] if w in comp)
            if start in nxt:
                found.append((sorted(comp), path + [start]))
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return found


def describe(found, edges) -> str:
    lines = []
    for members, cycle in found:
        lines += [f"{' -> '.join(cycle)}   (in one cycle: {', '.join(members)})"]
        lines += [f"  {a} -> {b}: {edges[a][b]}" for a, b in zip(cycle, cycle[1:])]
    return "\n".join(lines)


def test_the_graph_sees_every_kind_of_import():
    edges = graph()
    assert "agq_keras.quantizers.base" in edges["agq_keras.quantizers.fixed"]  # from a.b import name
    assert "agq_keras.quantizers" in edges["agq_keras.layers"]  # from a import submodule
    assert "agq_keras.training.baselines" in edges["agq_keras.experiments.run"]  # from a import b, c as d
    assert "agq_keras.export.verify" in edges["agq_keras.export.targets"]  # inside a function
    assert "agq_keras.networks" in edges[PACKAGE]  # the facade's own imports count
    assert not any(PACKAGE in targets for targets in edges.values())


def test_no_cycle_among_modules():
    edges = graph()
    found = cycles(edges)
    assert not found, "import cycle(s) among modules:\n" + describe(found, edges)


def test_no_cycle_among_units():
    units = unit_graph(graph())
    assert {"agq_keras.quantizers", "agq_keras.layers", "agq_keras.models", "agq_keras.training",
            "agq_keras.export", "agq_keras.experiments", "agq_keras.configs"} <= set(units)
    found = cycles(units)
    assert not found, "import cycle(s) among the package's units:\n" + describe(found, units)


def test_training_knows_nothing_above_it():
    """The trainer's package takes F and H as given: it never imports the builders, H or the drivers."""
    units = unit_graph(graph())
    above = {"agq_keras.models", "agq_keras.auxiliary", "agq_keras.networks", "agq_keras.experiments",
             "agq_keras.configs"}
    assert not above & set(units["agq_keras.training"]), units["agq_keras.training"]
    assert "agq_keras.models" not in units["agq_keras.auxiliary"], units["agq_keras.auxiliary"]


def test_the_library_never_imports_the_study():
    """study/ (the paper study, not installed) sits above the library: it imports agq_keras, never the reverse."""
    known = modules()
    up = [f"{os.path.relpath(path, ROOT)}:{line}" for module, path in known.items()
          for target, line in imported(module, path, known) if target.split(":")[0].split(".")[0] == "study"]
    assert up == [], up
    runner = imported("study.runner", os.path.join(ROOT, "study", "runner.py"), known)
    assert any(t.startswith("agq_keras.experiments") for t, _ in runner)  # the other way round is seen


def test_the_builders_know_nothing_of_h_or_the_trainer():
    """F's builders make F alone: H (agq_keras.auxiliary.attach) and the trainer sit above them, and
    agq_keras.build (agq_keras.networks) composes the three."""
    units = unit_graph(graph())
    assert not {"agq_keras.auxiliary", "agq_keras.training", "agq_keras.networks"} & set(units["agq_keras.models"])
    assert {"agq_keras.models", "agq_keras.auxiliary"} <= set(units["agq_keras.networks"])
