"""The house's imports go one way: down the layers of docs/architecture.md.

Every `import` of a personatag module counts, at module level or inside a
function (a lazy import is still a dependency), and under `TYPE_CHECKING` too
(an annotation that names a higher layer is a dependency on it). The check
fails on an import that goes up a layer and on any circle: between top-level
packages and between the modules of one package.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Bottom first. A unit is a top-level package or module of personatag.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "base",
        frozenset(
            {"personatag", "config", "domain", "errors", "logs", "metrics", "buckets"}
            | {"service", "times", "files"}
        ),
    ),
    ("store", frozenset({"store"})),
    (
        "domain",
        frozenset(
            {"criteria", "definitions", "memberships", "accounts", "audit_log", "contacts"}
            | {"schemas", "importer", "generate"}
        ),
    ),
    ("engines", frozenset({"engines"})),
    (
        "services",
        frozenset(
            {"tagging", "requests", "jobs", "recommend", "membership_events", "streaming"}
            | {"doctor"}
        ),
    ),
    ("interfaces", frozenset({"cli", "web", "serve", "demo"})),
)


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    where: str  # file:line


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges(root: Path, package: str = "personatag") -> tuple[set[str], list[Edge]]:
    """Every module of `package` under `root`, and every import between them."""
    files = [p for p in (root / package).rglob("*.py") if "migrations" not in p.parts]
    modules = {module_name(p, root) for p in files}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for path in files:
        source = module_name(path, root)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = source.split(".") if is_package else source.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # `from pkg import mod` imports the module pkg.mod
                targets = [f"{module}.{alias.name}" for alias in node.names] or [module]
            for name in targets:
                if name.split(".")[0] != package:
                    continue
                target = resolve(name)
                if target is not None and target != source:
                    edges.append(Edge(source, target, f"{path.relative_to(root)}:{node.lineno}"))
    return modules, edges


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(layers: tuple[tuple[str, frozenset[str]], ...], name: str) -> int | None:
    for index, (_, units) in enumerate(layers):
        if name in units:
            return index
    return None


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
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


def problems(
    root: Path,
    layers: tuple[tuple[str, frozenset[str]], ...] = LAYERS,
    package: str = "personatag",
) -> Iterator[str]:
    """What breaks the layering, one line each (empty when the house is in order)."""
    modules, edges = import_edges(root, package)
    for name in sorted({unit(m) for m in modules}):
        if layer_of(layers, name) is None:
            yield f"{package}.{name} belongs to no layer: add it to LAYERS and the docs"
    for edge in sorted(set(edges), key=lambda e: (e.where, e.target)):
        low, high = layer_of(layers, unit(edge.source)), layer_of(layers, unit(edge.target))
        if low is not None and high is not None and high > low:
            yield (
                f"{edge.where}: {edge.source} ({layers[low][0]}) imports "
                f"{edge.target} ({layers[high][0]}), a higher layer"
            )
    units: dict[str, set[str]] = {}
    inner: dict[str, set[str]] = {}
    for edge in edges:
        a, b = unit(edge.source), unit(edge.target)
        if a != b:
            units.setdefault(a, set()).add(b)
        elif package + "." + a not in (edge.source, edge.target):
            # inside one package; a package's own __init__ (its face) is left out
            inner.setdefault(edge.source, set()).add(edge.target)
    for circle in circles(units):
        yield "packages import each other in a circle among: " + " -> ".join(circle)
    for circle in circles(inner):
        yield "modules import each other in a circle among: " + " -> ".join(circle)


def test_imports_go_one_way_down_the_layers() -> None:
    found = list(problems(SRC))
    assert not found, "\n".join(found)


def test_the_docs_name_every_layer_and_unit() -> None:
    doc = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name, units in LAYERS:
        assert name in doc, f"docs/architecture.md does not name the {name} layer"
        for item in units - {"personatag"}:
            assert item in doc, f"docs/architecture.md does not place {item}"


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


TOY_LAYERS = (("low", frozenset({"low", "pkg"})), ("high", frozenset({"high"})))


def test_the_check_catches_an_upward_import_even_a_lazy_one(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "def f():\n    from pkg.high import g\n    return g\n",
            "pkg/high.py": "from pkg.low import f\n\ndef g():\n    return f\n",
        },
    )
    found = list(problems(root, TOY_LAYERS, "pkg"))
    assert any("pkg.low (low) imports pkg.high (high)" in p for p in found), found
    assert any("circle among: high -> low" in p for p in found), found


def test_the_check_catches_a_circle_inside_a_package(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "from pkg.low.a import x\n",
            "pkg/low/a.py": "from pkg.low import b\nx = 1\n",
            "pkg/low/b.py": "from pkg.low.a import x\n",
        },
    )
    found = list(problems(root, TOY_LAYERS, "pkg"))
    assert found == ["modules import each other in a circle among: pkg.low.a -> pkg.low.b"], found


def test_the_check_names_a_module_in_no_layer(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/stray.py": "import pkg.low\n"})
    assert list(problems(root, TOY_LAYERS, "pkg")) == [
        "pkg.stray belongs to no layer: add it to LAYERS and the docs"
    ]


# What the Flink cluster's Python has: the standard library and PyFlink; the
# stream job's zip adds personatag and SQLAlchemy (engines/flink/stream.py).
_BLOCKER = """
import importlib.abc, sys
ALLOWED = {allowed!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_"):
            return None
        raise ImportError(f"the job program imports {{name}}, which the cluster does not have")
sys.meta_path.insert(0, Block())
import {module}
"""


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("personatag.engines.flink.programs.batch_job", ("personatag",)),
        (
            "personatag.engines.flink.programs.stream_job",
            ("personatag", "sqlalchemy", "typing_extensions", "greenlet"),
        ),
    ],
)
def test_the_flink_job_programs_import_only_what_the_cluster_has(
    module: str, allowed: tuple[str, ...]
) -> None:
    code = _BLOCKER.format(allowed=set(allowed), module=module)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
