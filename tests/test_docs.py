"""The documentation: the site builds strictly, and every example in it runs.

* ``mkdocs build --strict`` (slow): broken links, missing anchors, pages left out of the
  navigation, docstrings that refer to an object that does not exist (see
  ``scripts/griffe_focuslens.py``) and griffe's docstring warnings all fail the build.
* The API page documents every public module and every name of ``focuslens.__all__``.
* The CLI reference is the commands' current ``--help`` (``scripts/cli_reference.py``).
* The Python blocks of the pages below and of the README run, in order, in one
  namespace per page (slow). A block right after ``<!-- test: skip (reason) -->`` is not
  run; a block right after ``<!-- test: instead ... -->`` is replaced by the code inside
  that comment (a stand-in for downloaded weights, say).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import focuslens

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_PAGES = [
    "index.md",
    "getting-started.md",
    "concepts.md",
    "howto/score-your-model.md",
    "howto/released-directions.md",
    "howto/batching-and-chat-templates.md",
    "limits.md",
    "head-studies.md",
]
"""Pages whose Python blocks the tests run (the pages owned by the docs; the module
pages heads.md, directions.md and long-contexts.md are tested by their modules' tests)."""

_BLOCK = re.compile(
    r"(?:<!--\s*test:\s*(?P<mode>skip|instead)(?P<arg>.*?)-->\s*\n)?"
    r"^```python[^\n]*\n(?P<code>.*?)^```",
    re.DOTALL | re.MULTILINE,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each Python block to run, stand-ins applied, skips left out."""
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        if m.group("mode") == "skip":
            continue
        code = m.group("arg") if m.group("mode") == "instead" else m.group("code")
        out.append((line, code))
    return out


def run_page(path: Path) -> None:
    """Run a page's Python blocks in one namespace; a failure names the page and line."""
    import torch

    namespace: dict = {"__name__": f"docs:{path.name}"}
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest on a shared CPU
    sys.path.insert(0, str(ROOT / "notebooks"))  # the offline stand-ins of _offline.py
    text = path.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert blocks or "```python" not in text, f"no Python block of {path} would run"
    try:
        for line, code in blocks:
            try:
                exec(compile(code, f"{path}:{line}", "exec"), namespace)  # noqa: S102
            except Exception as exc:
                raise AssertionError(
                    f"the Python block at {path.relative_to(ROOT)}:{line} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
    finally:
        sys.path.remove(str(ROOT / "notebooks"))
        torch.set_num_threads(threads)
        os.chdir(cwd)


def test_python_blocks_parser():
    text = (
        "a\n```python\nx = 1\n```\n<!-- test: skip (weights) -->\n```python\nboom()\n```\n"
        "<!-- test: instead\ny = 2\n-->\n```python\ny = load()\n```\n```bash\nls\n```\n"
    )
    blocks = [code for _, code in python_blocks(text)]
    assert blocks == ["x = 1\n", "\ny = 2\n"]


def public_modules() -> list[str]:
    names = ["focuslens"]
    for info in pkgutil.walk_packages(focuslens.__path__, "focuslens."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_api_page_documents_every_public_module_and_name():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^:::\s*([\w.]+)\s*$", text, re.MULTILINE))
    missing = [m for m in public_modules() if m != "focuslens" and m not in rendered]
    assert not missing, f"docs/api.md has no '::: module' block for {missing}"
    unknown = sorted(rendered - set(public_modules()))
    assert not unknown, f"docs/api.md renders modules that do not exist: {unknown}"
    names = [n for n in focuslens.__all__ if not n.startswith("__")]
    absent = [n for n in names if f"`{n}`" not in text]
    assert not absent, f"docs/api.md does not mention the public names {absent}"


def test_api_page_names_resolve():
    """Every ``focuslens.x.y`` written in the API page's tables exists."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for path in sorted(set(re.findall(r"\]\[(focuslens(?:\.\w+)+)\]", text))):
        module, _, attr = path.rpartition(".")
        try:
            obj = importlib.import_module(path)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, f"docs/api.md links to {path}, which does not exist"


def test_results_page_has_the_model_cards_tables():
    """docs/results.md reports the card's measurements, as scripts/results_tables.py
    prints them from focuslens/demo/measurements.json."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import results_tables
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    page = (DOCS / "results.md").read_text(encoding="utf-8")
    for name, table in results_tables.card_tables().items():
        assert table in page, f"docs/results.md lacks the card's {name} table:\n{table}"


def test_head_study_page_has_the_scripts_tables():
    """docs/head-studies.md quotes scripts/head_study.py's tables of the recorded run
    (benchmarks/results/head_study.json)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import head_study
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    result = json.loads((ROOT / "benchmarks" / "results" / "head_study.json").read_text())
    page = (DOCS / "head-studies.md").read_text(encoding="utf-8")
    assert head_study.render(result) in page
    assert f"{result['settings']['n_prompts']} prompts" in page


def test_cli_reference_is_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_docs_build_strict(tmp_path, record_property):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    elapsed = time.perf_counter() - start
    record_property("docs_build_seconds", round(elapsed, 1))
    print(f"\nmkdocs build --strict: {elapsed:.1f} s")
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        warnings or proc.stderr.splitlines()[-30:]
    )
    assert (tmp_path / "api" / "index.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples write land in a temporary folder
    run_page(DOCS / page)


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(ROOT / "README.md")
