"""The HTML report: self-contained, sortable tables, and it renders in headless Chromium.

The browser checks need Debian's ``chromium`` (``apt-get install -y chromium``); they
are skipped, saying so, where it is absent. Screenshots are kept under ``artifacts/``
(and the pytest tmp dir) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from _oracles import make_prompts
from _tiny import demo_model_missing, tiny_model

from focuslens.app.run import Condition, RunFolder
from focuslens.app.stages import stage_eval, stage_learn, stage_scores
from focuslens.app.story import build_report
from focuslens.plots.report import Report, table_html

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get update && apt-get install -y chromium)",
)

# Injected at the top of <head> of a copy of the report: records console errors and
# uncaught exceptions, then, after load, whether every plotly figure drew.
PROBE = """<script>
window.__probeErrors = [];
(function () {
  var original = console.error;
  console.error = function () {
    window.__probeErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) { window.__probeErrors.push("error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) {
    window.__probeErrors.push("unhandled rejection: " + e.reason);
  });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var graphs = Array.prototype.slice.call(document.querySelectorAll(".plotly-graph-div"));
      var drawn = graphs.filter(function (g) {
        return g._fullLayout && g._fullData && g._fullData.length > 0 &&
               g.querySelectorAll(".main-svg").length > 0;
      });
      var out = document.createElement("pre");
      out.id = "probe-result";
      out.textContent = JSON.stringify({
        errors: window.__probeErrors, figures: graphs.length, drawn: drawn.length,
        traces: graphs.map(function (g) { return (g._fullData || []).length; }),
        tables: document.querySelectorAll("table.sortable").length
      });
      document.body.appendChild(out);
    }, 1500);
  });
})();
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--log-level=0",
        "--virtual-time-budget=20000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def render(report: Path, screenshot: Path) -> dict:
    """Open ``report`` in headless Chromium: the probe's findings, console lines, screenshot."""
    probe = report.with_name(report.stem + ".probe.html")
    probe.write_text(report.read_text().replace("<head>", "<head>\n" + PROBE, 1))
    done = _chromium("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe never reported; chromium said: {done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    result["console"] = [l for l in done.stderr.splitlines() if "CONSOLE" in l]
    shot = _chromium(
        "--hide-scrollbars",
        "--window-size=1280,6000",
        f"--screenshot={screenshot}",
        report.as_uri(),
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    return result


def keep(path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


# ---------------------------------------------------------------------- offline HTML
def test_report_is_one_self_contained_file(tmp_path):
    report = Report("t", settings={"model": "tiny", "k": [1, 2]})
    report.add_section("A", "First paragraph.\n\nSecond <b>paragraph</b>.", numbers={"acc": 0.5})
    report.sections[0].figures.append(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    html = report.save(tmp_path / "r.html").read_text()
    # No network: no external script, stylesheet or image; plotly's JS is inline (its
    # bundle mentions URLs, e.g. map tile servers, which a bar chart never loads).
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert not re.search(r"<script[^>]+src=", html) and "<link" not in markup
    assert html.count("<script") >= 3 and len(html) > 1_000_000  # plotly.js itself
    assert "Second &lt;b&gt;paragraph&lt;/b&gt;." in html  # texts are escaped
    assert html.index('id="section-1"') < html.index('id="settings"')
    assert ">model</td>" in html and ">1, 2</td>" in html  # the settings table


def test_tables_keep_raw_values_for_sorting():
    frame = pd.DataFrame({"name": ["b", "a"], "accuracy": [0.123456, float("nan")], "n": [10, 2]})
    html = table_html(frame, "Conditions")
    assert '<table class="sortable"><caption>Conditions</caption>' in html
    assert '<td class="num" data-value="0.123456">0.1235</td>' in html
    assert '<td class="num" data-value=""></td>' in html  # NaN: an empty cell
    assert html.count("<tr>") == 3
    long = table_html(pd.DataFrame({"x": range(20)}), None, max_rows=5)
    assert long.count("<tr>") == 6 and "First 5 of 20 rows shown." in long


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder of a tiny model: scores, heads, attention, two conditions."""
    model = tiny_model("gqa")
    run = RunFolder(tmp_path_factory.mktemp("run"))
    stage_scores(model, make_prompts(4), run, k=2, progress=False)
    heads = run.heads()
    test = make_prompts(4, seed=1)
    kw = {"measure_heads": heads, "max_new_tokens": 2, "progress": False}
    stage_eval(model, test, run, **kw)
    stage_eval(model, test, run, Condition("gold_only"), **kw)
    return run


@pytest.mark.slow
def test_report_of_a_run_folder_has_its_sections(tiny_run):
    report = build_report(tiny_run.folder)
    titles = [s.title for s in report.sections]
    assert titles[:3] == ["Overview", "Contextual heads", "Where the contextual heads look"]
    overview = report.sections[0].tables["Conditions"]
    evals = tiny_run.evals()
    base = evals[evals.kind == "baseline"]
    assert overview.set_index("condition").loc["baseline", "n"] == len(base)
    assert overview.set_index("condition").loc["baseline", "accuracy"] == pytest.approx(
        base.correct.mean()
    )
    # The tiny prompts vary in gold position and length, so those sections appear too.
    assert titles[3:] == ["Accuracy by gold position", "Accuracy by number of documents"]
    by_position = report.sections[3].tables["Accuracy by gold position"]
    expected = base.groupby("gold_position").correct.agg(["mean", "size"])
    assert by_position.x.tolist() == expected.index.tolist()
    assert by_position.n.tolist() == expected["size"].tolist()
    assert report.n_figures == 5  # head maps, attention by document and zoomed, two curves


@needs_chromium
@pytest.mark.slow
def test_tiny_run_report_renders_in_chromium(tiny_run, tmp_path):
    path = build_report(tiny_run.folder).save(tmp_path / "tiny-report.html")
    result = render(path, tmp_path / "tiny-report.png")
    keep(tmp_path / "tiny-report.png")
    assert result["errors"] == [] and not [l for l in result["console"] if "Uncaught" in l]
    assert result["figures"] == 5 and result["drawn"] == 5
    assert result["tables"] >= 3


@needs_chromium
@pytest.mark.slow
def test_demo_quick_report_renders_in_chromium(tmp_path):
    missing = demo_model_missing()
    if missing:
        pytest.skip(f"the demo model is not available ({missing})")
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "focuslens.app.cli",
            "demo",
            "--quick",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in done.stdout
    assert "accuracy, baseline:" in done.stdout
    result = render(out / "report.html", tmp_path / "demo-report.png")
    keep(tmp_path / "demo-report.png")
    assert result["errors"] == [], result["errors"]
    assert not [l for l in result["console"] if "Uncaught" in l or "Error" in l]
    # Every figure drew: head maps, ablation, two attention maps, split-softmax accuracy
    # and allocation, direction norms and loss, steering accuracy and allocation, gold position.
    assert result["figures"] >= 10 and result["drawn"] == result["figures"]
    assert all(n > 0 for n in result["traces"])


def test_compare_uses_non_overlapping_wilson_intervals():
    from focuslens.app.story import compare

    def frame(hits, n):
        return pd.DataFrame({"correct": [True] * hits + [False] * (n - hits)})

    base = frame(50, 100)  # Wilson 95%: [0.404, 0.596]
    assert compare(frame(65, 100), base) == "within noise of"  # [0.553, 0.736] overlaps
    assert compare(frame(70, 100), base) == "clearly above"  # [0.604, 0.781]
    assert compare(frame(30, 100), base) == "clearly below"  # [0.219, 0.396]
    assert compare(frame(31, 100), base) == "within noise of"


def test_compare_is_paired_on_the_same_prompts():
    """Same prompts: the exact McNemar test decides, not the overlap of intervals."""
    from focuslens.app.story import _versus, compare

    def frame(correct):
        return pd.DataFrame({"example": range(len(correct)), "correct": correct})

    base = frame([True] * 50 + [False] * 50)
    fixes = frame([True] * 62 + [False] * 38)  # 12 fixed, 0 broken: p = 2 / 4096
    # unpaired, 0.62 and 0.50 on 100 prompts would be "within noise" (intervals overlap)
    assert compare(fixes, base) == "clearly above"
    swaps = frame([False] * 6 + [True] * 50 + [False] * 44)  # 6 fixed, 6 broken
    assert compare(swaps, base) == "within noise of"
    breaks = frame([True] * 40 + [False] * 60)  # 10 broken: p = 2 / 1024
    assert compare(breaks, base) == "clearly below"
    word, text = _versus("boost", fixes, base)
    assert word == "clearly above"
    assert "12 right that the baseline gets wrong and 0 the reverse" in text
    assert "p = 0.00049" in text


def test_conditions_are_typed_rows_read_back_as_written(tiny_run):
    """The run folder stores each condition's fields; reading them back needs no parsing."""
    conditions = [
        Condition(),
        Condition("gold_only"),
        Condition("split_softmax", "top", 2, tau=0.1),
        Condition("steering", "random", 3, alpha="auto"),
        Condition("steering", "top", 2, alpha=-0.5),
    ]
    for condition in conditions:
        assert Condition.from_row(condition.columns()) == condition
    evals = tiny_run.evals()
    for name, rows in evals.groupby("condition", sort=False):
        assert {Condition.from_row(row).name for _, row in rows.iterrows()} == {name}
    with pytest.raises(ValueError, match="kind must be one of"):
        Condition("split-softmax")
    with pytest.raises(ValueError, match="needs focus directions"):
        Condition("steering", "top", 2, alpha=1.0).intervention([(0, 0)])


def test_auto_rows_carry_the_alphas_the_rule_chose(tmp_path):
    """An ``alpha="auto"`` condition stores the mean alpha the rule chose, and the
    steering section of the report quotes it."""
    model = tiny_model("rotary")
    run = RunFolder(tmp_path / "run")
    prompts = make_prompts(4)
    stage_scores(model, prompts, run, k=2, progress=False)
    heads = run.heads()[:2]
    directions = stage_learn(model, prompts, run, heads=heads, epochs=1, progress=False)
    test = make_prompts(4, seed=1)
    kw = {"max_new_tokens": 2, "progress": False}
    stage_eval(model, test, run, **kw)
    condition = Condition("steering", "top", 2, alpha="auto")
    intervention = condition.intervention(heads, directions)
    stage_eval(model, test, run, condition, intervention=intervention, **kw)
    rows = run.evals().query("condition == @condition.name")
    chosen = sum(intervention.history) / len(intervention.history)
    assert len(intervention.history) >= len(test)
    assert rows["mean_alpha"].tolist() == pytest.approx([chosen] * len(test))
    report = build_report(run.folder)
    (section,) = [s for s in report.sections if s.title == "Steering with focus directions"]
    assert f"mean alpha chosen {chosen:.2f}" in section.text
