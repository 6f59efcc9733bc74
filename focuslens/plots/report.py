"""A self-contained HTML report: figures, short texts, key numbers and sortable tables.

A :class:`Report` is a list of :class:`Section` s (a title, a paragraph or two saying
what the figure shows, key numbers, plotly figures, tables) plus the run's settings
(listed last).
:meth:`Report.save` writes **one** HTML file that embeds plotly's JavaScript, so it opens
offline, in any browser, years later; nothing in it touches the network. Tables sort by
clicking a column header (numbers numerically).

The report only assembles: figures come from :mod:`focuslens.plots`, numbers from the
results. ``focuslens demo`` and ``focuslens report`` build one.

Example:
    >>> import plotly.graph_objects as go
    >>> report = Report("demo", settings={"model": "tiny"})
    >>> section = report.add_section("A figure", "What it shows.", numbers={"accuracy": 0.5})
    >>> section.figures.append(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    >>> html = report.to_html()
    >>> "<script src=" in html, html.count('class="plotly-graph-div"')
    (False, 1)
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

MAX_TABLE_ROWS = 500
"""Tables longer than this show their first rows and say how many were left out."""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1rem 2rem 4rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
nav ol { columns: 2; }
.numbers { display: flex; flex-wrap: wrap; gap: .6rem; margin: .8rem 0; }
.number { border: 1px solid #ccd; border-radius: 6px; padding: .35rem .7rem; background: #f7f9fc; }
.number b { display: block; font-size: 1.25rem; }
.figure { margin: 1rem 0; }
table.sortable { border-collapse: collapse; font-size: .85rem; margin: .6rem 0 1.2rem; }
table.sortable th, table.sortable td { border: 1px solid #ddd; padding: .2rem .5rem; }
table.sortable th { background: #eef2f7; cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
.note { color: #666; font-size: .85rem; }
"""

_SORT_JS = """
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
          var nx = parseFloat(x), ny = parseFloat(y), r;
          if (!isNaN(nx) && !isNaN(ny)) { r = nx - ny; } else { r = x < y ? -1 : x > y ? 1 : 0; }
          return ascending ? r : -r;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
});
"""


def format_value(value: Any) -> str:
    """A short display string: floats to 4 significant digits, NaN as an empty cell."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    return str(value)


@dataclass
class Section:
    """One part of the report.

    Attributes:
        title: Heading.
        text: What the figure shows and what to read from it; blank lines separate
            paragraphs. Plain text (escaped).
        numbers: Key numbers shown as tiles, ``{label: value}``.
        figures: Plotly figures.
        tables: ``{caption: DataFrame}``, rendered sortable.
    """

    title: str
    text: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[Any] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class Report:
    """A self-contained HTML report (see the module docstring).

    Attributes:
        title: Page title.
        settings: The run's settings (model, prompts, seeds, ...), shown first.
        sections: The sections, in order.
    """

    title: str = "focuslens report"
    settings: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def add_section(
        self,
        title: str,
        text: str = "",
        *,
        numbers: Mapping[str, Any] | None = None,
        figures: list[Any] | None = None,
        tables: Mapping[str, pd.DataFrame] | None = None,
    ) -> Section:
        """Append a section and return it."""
        section = Section(title, text, dict(numbers or {}), list(figures or []), dict(tables or {}))
        self.sections.append(section)
        return section

    @property
    def n_figures(self) -> int:
        return sum(len(s.figures) for s in self.sections)

    def to_html(self) -> str:
        """The whole page as one string (plotly's JavaScript included once)."""
        counter = iter(range(1_000_000))
        body = [f"<h1>{html.escape(self.title)}</h1>", self._nav()]
        for i, section in enumerate(self.sections, start=1):
            body.append(_section_html(section, f"section-{i}", counter))
        body.append(self._settings_html())
        generated = _dt.datetime.now().isoformat(timespec="seconds")
        body.append(f'<p class="note">Generated by focuslens on {generated}.</p>')
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n"
            f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
            f'<script type="text/javascript">{_SORT_JS}</script>\n</head>\n<body>\n'
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def _nav(self) -> str:
        items = "".join(
            f'<li><a href="#section-{i}">{html.escape(s.title)}</a></li>'
            for i, s in enumerate(self.sections, start=1)
        )
        if self.settings:
            items += '<li><a href="#settings">Settings of this run</a></li>'
        return f"<nav><ol>{items}</ol></nav>" if items else ""

    def _settings_html(self) -> str:
        if not self.settings:
            return ""
        frame = pd.DataFrame(
            {"setting": list(self.settings), "value": [_flat(v) for v in self.settings.values()]}
        )
        return (
            '<section id="settings"><h2>Settings of this run</h2>'
            + table_html(frame, None)
            + "</section>"
        )


def _flat(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_flat(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    return format_value(value)


def _section_html(section: Section, anchor: str, counter: Any) -> str:
    parts = [f'<section id="{anchor}"><h2>{html.escape(section.title)}</h2>']
    for paragraph in section.text.strip().split("\n\n"):
        if paragraph.strip():
            parts.append(f"<p>{html.escape(paragraph.strip())}</p>")
    if section.numbers:
        tiles = "".join(
            f'<div class="number">{html.escape(str(k))}<b>{html.escape(_flat(v))}</b></div>'
            for k, v in section.numbers.items()
        )
        parts.append(f'<div class="numbers">{tiles}</div>')
    for fig in section.figures:
        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{next(counter)}",
            config={"displaylogo": False, "responsive": True},
        )
        parts.append(f'<div class="figure">{div}</div>')
    for caption, frame in section.tables.items():
        parts.append(table_html(frame, caption=caption))
    parts.append("</section>")
    return "\n".join(parts)


def table_html(frame: pd.DataFrame, caption: str | None, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A sortable HTML table; each cell keeps its raw value in ``data-value`` for sorting."""
    shown = frame.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for record in shown.itertuples(index=False):
        cells = []
        for value in record:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            raw = "" if numeric and isinstance(value, float) and math.isnan(value) else value
            cls = ' class="num"' if numeric else ""
            cells.append(
                f'<td{cls} data-value="{html.escape(str(raw), quote=True)}">'
                f"{html.escape(_flat(value))}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    note = ""
    if len(frame) > max_rows:
        note = f'<p class="note">First {max_rows} of {len(frame)} rows shown.</p>'
    return (
        f'<table class="sortable">{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{note}"
    )


__all__ = [
    "Report",
    "Section",
]
