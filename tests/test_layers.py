"""The package's import layering: no import cycles, and no module imports a higher layer.

Every module of ``refinenet/`` is parsed with ``ast`` (nothing is imported), and every import
statement counts, including those inside functions: a lazy import still ties the two modules
together, it only hides the cycle until run time. The layers, lowest first, are the table below;
a module may import its own layer and those beneath it. A module that the table does not name
fails the test with its name, so that a new module gets a place on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "refinenet"

# Lowest first. A name covers the module ``refinenet.<name>`` and, for a subpackage, every module
# in it; "__init__" is the package's own ``refinenet/__init__.py`` (the public API).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations: configuration, building blocks, data, drawing, counting",
        ("config", "blocks", "backbones", "data", "visualize", "flops", "modelcard"),
    ),
    ("the models", ("models",)),
    ("the model-folder format", ("folder",)),
    ("the zoo table", ("zoo",)),
    ("weights in and out: the Hub, the converters", ("hub", "convert")),
    (
        "using models: inference, runtime, images, evaluation, training",
        ("runtime", "images", "inference", "evaluate", "train"),
    ),
    (
        "serving and the demo: its pages, the variants compared, widgets and example photos",
        ("serving", "demo", "compare", "widgets", "examples"),
    ),
    ("the public API", ("__init__",)),
    ("the command line", ("cli",)),
]


def module_files(root: Path) -> dict[str, Path]:
    """``refinenet.x.y`` -> file, for every module under the package folder ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from .pkg import sub`` imports the submodule when there is one, else a name of pkg.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import refinenet.a.b`` depends on refinenet.a.b; keep the longest known prefix.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def layer_of(module: str) -> int | None:
    """Index into LAYERS of a module, by the most specific name the table gives for it."""
    relative = "__init__" if module == PACKAGE else module.removeprefix(PACKAGE + ".")
    parts = relative.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        for index, (_, names) in enumerate(LAYERS):
            if prefix in names:
                return index
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high > low:
                problems.append(
                    f"{module} (layer {low}, {LAYERS[low][0]}) imports {target} (layer {high}, {LAYERS[high][0]})"
                )
    return problems


# The source tree beside these tests (not whichever refinenet happens to be installed).
GRAPH = import_graph(Path(__file__).resolve().parents[1] / PACKAGE)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not unplaced, (
        f"modules without a layer: {', '.join(unplaced)}; add each to LAYERS in "
        f"tests/test_layers.py, at the lowest layer that holds everything it imports"
    )


def test_there_is_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_layer():
    problems = layering_problems(GRAPH)
    assert not problems, "imports against the layering:\n  " + "\n  ".join(problems)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A lazy import inside a function still makes a cycle and an upward edge."""
    root = tmp_path / PACKAGE
    (root / "cli").mkdir(parents=True)
    (root / "__init__.py").write_text("from .hub import load\n")
    (root / "models.py").write_text("def save(self):\n    from .hub import save\n    return save(self)\n")
    (root / "hub.py").write_text("from . import models\nfrom .models import save as _\n")
    (root / "cli" / "__init__.py").write_text("")
    (root / "cli" / "run.py").write_text("import refinenet.cli\nfrom ..hub import load\nfrom refinenet import zoo\n")
    (root / "zoo.py").write_text("")
    graph = import_graph(root)
    assert graph["refinenet.cli.run"] == {"refinenet.cli", "refinenet.hub", "refinenet.zoo"}
    assert graph["refinenet"] == {"refinenet.hub"}
    assert find_cycle(graph) == ["refinenet.hub", "refinenet.models", "refinenet.hub"]
    assert layering_problems(graph) == [
        "refinenet.models (layer 1, the models) imports refinenet.hub (layer 4, weights in and out: the Hub, "
        "the converters)"
    ]
    assert layer_of("refinenet.convert.matlab") == layer_of("refinenet.convert")
    assert layer_of("refinenet.newthing") is None
