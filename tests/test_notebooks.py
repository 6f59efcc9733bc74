"""The tutorial notebooks: current with their source, stripped, and they run.

The source of each notebook ``notebooks/NN-*.ipynb`` is its jupytext pair
``notebooks/NN-*.py`` (percent format); the two must hold the same cells.

Each notebook is executed top to bottom in a real Jupyter kernel (``nbclient``), with
the working directory ``notebooks/``; any error in any cell fails the test, and the run
time of each notebook is printed and recorded (``record_property``, in the JUnit XML
with ``--junitxml``). Notebook 04 needs downloaded weights, so it runs with
``SMOKE_TEST = True`` injected after its parameter cell (papermill's convention): an
offline random stand-in model and release (``notebooks/_offline.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
SMOKE_PARAMETERS = "SMOKE_TEST = True  # injected by tests/test_notebooks.py\n"
TIMEOUT_S = 900
"""Per cell; a notebook meant to run in a few minutes fails long before."""


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def with_parameters(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    """A copy with a cell of ``source`` after the cell tagged ``parameters`` (if any)."""
    nb = nbformat.from_dict(nb)
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            injected = nbformat.v4.new_code_cell(source)
            injected.metadata["tags"] = ["injected-parameters"]
            nb.cells.insert(i + 1, injected)
            break
    return nb


def test_the_four_tutorials_exist():
    assert [n[:2] for n in NOTEBOOKS] == ["01", "02", "03", "04"], NOTEBOOKS


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_source(name):
    import jupytext

    source = NOTEBOOK_DIR / name.replace(".ipynb", ".py")
    assert source.is_file(), f"{source.name} is missing; run jupytext --sync notebooks/*.ipynb"
    expected = _cells(jupytext.read(source))
    actual = _cells(_read(name))
    assert actual == expected, (
        f"{name} differs from {source.name}; run jupytext --sync notebooks/*.py"
    )


def test_every_source_has_its_notebook():
    sources = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]-*.py"))
    assert sources == [Path(n).stem for n in NOTEBOOKS]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_outputs_are_stripped(name):
    nb = _read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"


def test_only_notebook_04_needs_parameters():
    tagged = {
        name: [c for c in _read(name).cells if "parameters" in c.metadata.get("tags", [])]
        for name in NOTEBOOKS
    }
    assert [n for n, cells in tagged.items() if cells] == [NOTEBOOKS[3]]
    (cell,) = tagged[NOTEBOOKS[3]]
    assert "SMOKE_TEST = False" in cell.source
    injected = with_parameters(_read(NOTEBOOKS[3]), SMOKE_PARAMETERS)
    index = injected.cells.index(cell)
    assert injected.cells[index + 1].source == SMOKE_PARAMETERS


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, record_property):
    from nbclient import NotebookClient

    nb = with_parameters(_read(name), SMOKE_PARAMETERS)
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    elapsed = time.perf_counter() - start
    record_property("notebook_seconds", round(elapsed, 1))
    print(f"\n{name}: {elapsed:.1f} s")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    warnings = [
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("name") == "stderr" and "Warning" in out.get("text", "")
    ]
    assert not warnings, f"{name} printed a warning: {warnings[0][:300]}"
    CHECKS.get(name[:2], lambda nb: None)(nb)


def _code_cell(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert len(cells) == 1, f"expected one code cell with {text!r}, found {len(cells)}"
    return cells[0]


def _check_01(nb: nbformat.NotebookNode) -> None:
    """A cell that ends with ``scores`` shows the card, offline (plotly's JS inline)."""
    from plotly.offline import get_plotlyjs

    cell = _code_cell(nb, "print(scores)\nscores")
    (html,) = [o.data["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    assert 'class="focuslens-result"' in html and "Plotly.newPlot(" in html
    assert get_plotlyjs() in html and "<script src" not in html


def _check_03(nb: nbformat.NotebookNode) -> None:
    """The explorer is shown as a widget, and the scripted value changes redraw it."""
    cell = _code_cell(nb, "panel = focuslens.explore(")
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs
    )
    text = "".join(o.get("text", "") for o in _code_cell(nb, "panel.alpha.value = 4.0").outputs)
    for label, setting in (("start:", "alpha=0, tau=1,"), ("alpha 4:", "alpha=4, tau=1,"),
                           ("tau 0.1:", "alpha=0, tau=0.1,")):  # fmt: skip
        line = next(line for line in text.splitlines() if line.startswith(label))
        assert "ExplorerView(heads=[" in line and setting in line, line


CHECKS = {"01": _check_01, "03": _check_03}
"""What some notebooks must show, checked on the executed notebook."""
