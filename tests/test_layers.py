"""The package's shape: imports go one way through the layers, and never in a circle.

    typing -> prompts -> tasks -> model -> heads -> scores -> interventions -> directions
           -> evaluation -> plots -> app

Every import of every module is read with ``ast`` (those written inside functions too;
not those under ``if TYPE_CHECKING:``, which never run).
A module may import from its own layer or a lower one; the one exception is a result's
``figure()`` / ``_repr_html_()`` importing :mod:`focuslens.plots` lazily, inside the
method. The shipped demo model's loader sits at the model layer; its
training script and card, which measure the model through the whole pipeline, at the app
layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "focuslens"
LAYERS = [
    "typing",
    "prompts",
    "tasks",
    "model",
    "heads",
    "scores",
    "interventions",
    "directions",
    "evaluation",
    "plots",
    "app",
]
APP_LEVEL_DEMO = {
    "focuslens.demo.card",
    "focuslens.demo._measure",
    "focuslens.demo._card_text",
    "focuslens.demo.train",
}
LAZY_PLOT_METHODS = {"figure", "_repr_html_"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    """The layer index of a module (``focuslens`` itself sits above every layer)."""
    if module == "focuslens":
        return len(LAYERS)
    if module in APP_LEVEL_DEMO:
        return LAYERS.index("app")
    top = module.split(".")[1]
    if top == "demo":
        return LAYERS.index("model")
    return LAYERS.index(top)


def layer_name(module: str) -> str:
    layer = layer_of(module)
    return LAYERS[layer] if layer < len(LAYERS) else "the package root"


def _target(node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    """The focuslens module an import reads (a submodule when it names one)."""
    if isinstance(node, ast.Import):
        name = alias.name
    else:
        if node.level or not node.module:
            raise AssertionError(f"relative import of {alias.name}: use absolute imports")
        sub = f"{node.module}.{alias.name}"
        name = sub if sub in MODULES else node.module
    if not name.startswith("focuslens"):
        return None
    while name not in MODULES:  # `import focuslens.x.y` of a package attribute
        name = name.rpartition(".")[0]
    return name


class _Imports(ast.NodeVisitor):
    """Collect (target, line, enclosing function names) for each focuslens import."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int, tuple[str, ...]]] = []
        self.stack: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):  # annotations only: not run
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self._add(node, alias)

    def _add(self, node: ast.Import | ast.ImportFrom, alias: ast.alias) -> None:
        target = _target(node, alias)
        if target is not None:
            self.found.append((target, node.lineno, tuple(self.stack)))


def import_edges() -> list[tuple[str, str, int, bool]]:
    """Every (importer, imported, line, allowed-lazy-plots) edge between focuslens modules."""
    edges = []
    for module, path in sorted(MODULES.items()):
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for target, line, stack in visitor.found:
            if target == module:
                continue
            lazy_plot = (
                target.startswith("focuslens.plots")
                and bool(stack)
                and stack[-1] in LAZY_PLOT_METHODS
            )
            edges.append((module, target, line, lazy_plot))
    return edges


def wrong_way(edges) -> list[str]:
    bad = []
    for src, dst, line, lazy_plot in edges:
        if lazy_plot or layer_of(dst) <= layer_of(src):
            continue
        bad.append(
            f"{MODULES[src].relative_to(PACKAGE.parent)}:{line}: {src} ({layer_name(src)}) "
            f"imports {dst} ({layer_name(dst)}), a higher layer"
        )
    return bad


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _, lazy_plot in edges:
        if not lazy_plot:
            graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)  # raises ValueError for a folder outside the layers


def test_imports_go_one_way():
    bad = wrong_way(import_edges())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_edges())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_can_fail():
    """The walkers see a wrong-way edge and a cycle when there is one."""
    fake = [
        ("focuslens.heads", "focuslens.scores.result", 1, False),
        ("focuslens.scores.result", "focuslens.heads", 2, False),
    ]
    assert wrong_way(fake) and cycles(fake) == [["focuslens.heads", "focuslens.scores.result"]]
    lazy = [("focuslens.scores.result", "focuslens.plots.figures", 3, True)]
    assert not wrong_way(lazy)


def test_lazy_plot_imports_only_in_result_methods():
    """Only ``figure()`` / ``_repr_html_()`` may reach up to the plots."""
    for src, dst, line, lazy_plot in import_edges():
        if lazy_plot:
            assert layer_of(src) < layer_of(dst), (src, dst, line)


def test_package_root_stays_small():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 10, root_modules


@pytest.mark.parametrize("heavy", ["plotly", "pandas"])
def test_import_focuslens_is_light(heavy):
    code = f"import sys, focuslens; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"`import focuslens` loads {heavy}"
