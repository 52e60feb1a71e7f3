"""Layers: no module of tensorslim imports from a higher layer (docs/architecture.md mirrors LAYERS).

Every `import` / `from ... import` of every module under src/tensorslim, at any depth (function-level
imports included), parsed with `ast`. `python tests/test_layers.py` prints the package import graph.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tensorslim"

#: Lowest first. A module may import its own unit and units of strictly lower layers. A unit is a
#: top-level module (errors, io ...) or subpackage (data, train ...); "tensorslim" is the package's
#: __init__, the public API, which registers compress's config section with transformers.
LAYERS = (
    ("errors", "env"),
    ("io", "signals"),
    ("validate",),
    ("data",),
    ("families", "decomposition"),
    ("compress",),
    ("tensorslim",),
    ("distill",),
    ("train", "evaluate"),
    ("report",),
    ("pipeline",),
    ("cli",),
)

#: Upward edges tolerated for now, each with the reason and who removes it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path, src: Path = SRC) -> tuple[str, bool]:
    """Dotted name of a source file and whether it is a package's __init__."""
    parts = path.relative_to(src).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def is_module(dotted: str, src: Path = SRC) -> bool:
    path = src.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """(module, line) for every tensorslim module `path` imports, relative imports resolved."""
    name, is_package = module_name(path, src)
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                candidate = f"{source}.{alias.name}"
                found.append((candidate if is_module(candidate, src) else source, node.lineno))
    return [(module, line) for module, line in found if module.split(".")[0] == PACKAGE]


def unit(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def layer_of() -> dict[str, int]:
    return {name: level for level, names in enumerate(LAYERS) for name in names}


def import_edges(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """{(importing unit, imported unit): ["file:line imports module", ...]} across units."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        source = unit(module_name(path, src)[0])
        for module, line in imported_modules(path, src):
            if unit(module) != source:
                where = f"{path.relative_to(src)}:{line} imports {module}"
                edges.setdefault((source, unit(module)), []).append(where)
    return edges


def graph_text() -> str:
    """One line per unit, lowest layer first: the units it imports."""
    edges = import_edges()
    lines = []
    for names in LAYERS:
        for name in names:
            targets = sorted({b for a, b in edges if a == name}, key=lambda b: (layer_of()[b], b))
            lines.append(f"{name:14} -> {', '.join(targets) if targets else '(nothing)'}")
    return "\n".join(lines)


def test_every_unit_has_a_layer():
    units = {unit(module_name(p)[0]) for p in (SRC / PACKAGE).rglob("*.py")}
    assert units == set(layer_of()), "add new top-level modules or subpackages to LAYERS (and docs/architecture.md)"


def test_no_module_imports_from_a_higher_layer():
    level = layer_of()
    upward = [
        f"{a} -> {b}: {where[0]}" + (f" (+{len(where) - 1} more)" if len(where) > 1 else "")
        for (a, b), where in sorted(import_edges().items())
        if level[b] >= level[a] and (a, b) not in KNOWN_UPWARD
    ]
    assert not upward, "imports from the same or a higher layer:\n" + "\n".join(upward)


def test_docs_list_the_same_layers():
    """docs/architecture.md's numbered list under "## Layers" names the units of LAYERS in order."""
    text = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8").split("## Layers", 1)[1]
    listed = [tuple(re.findall(r"`(\w+)`", line.split(" (")[0])) for line in re.findall(r"^\d+\. (.+)$", text, re.M)]
    assert tuple(listed) == LAYERS


def test_tolerated_upward_edges_still_exist():
    edges = import_edges()
    gone = [f"{a} -> {b}" for a, b in KNOWN_UPWARD if (a, b) not in edges]
    assert not gone, f"no longer imported, delete from KNOWN_UPWARD: {gone}"


def test_the_checker_sees_function_level_relative_and_absolute_imports(tmp_path):
    """The checker on a made-up package: an upward import hidden in a function, in a nested package."""
    files = {
        "__init__.py": "from .errors import E\n",
        "errors.py": "",
        "data/__init__.py": "",
        "data/pregen/__init__.py": "",
        "data/pregen/pool.py": "import os\nfrom ... import errors\n\ndef f():\n    from ...train import run\n",
        "train/__init__.py": "",
        "train/run.py": "import tensorslim.data.pregen.pool\nfrom ..data import pregen\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    edges = import_edges(tmp_path)
    assert set(edges) == {("tensorslim", "errors"), ("data", "errors"), ("data", "train"), ("train", "data")}
    assert edges[("data", "train")] == ["tensorslim/data/pregen/pool.py:5 imports tensorslim.train.run"]
    assert sorted(edges[("train", "data")]) == [
        "tensorslim/train/run.py:1 imports tensorslim.data.pregen.pool",
        "tensorslim/train/run.py:2 imports tensorslim.data.pregen",
    ]


if __name__ == "__main__":
    sys.stdout.write(graph_text() + "\n")
