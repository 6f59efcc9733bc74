"""Results that show themselves in a notebook: the HTML behind their ``_repr_html_``.

A Jupyter cell that ends with a result (``scores``, ``effects``, ``result``,
``directions``, an attention map) shows a small card: a title, the key numbers as a
table, and a small plotly figure. The figure needs plotly's JavaScript; the first card of
a kernel carries it inline (about 4.8 MB, once), and later cards reuse it, so nothing is
loaded from the network and the notebook works offline. Where scripts do not run (a
notebook viewer on the web, an untrusted notebook), the numbers still show.

If you clear the output that carried the JavaScript and reopen the saved notebook, the
later figures have none to draw with: call :func:`include_plotlyjs_again` and re-run a
cell that shows a result.

Terminals and ``print`` use the results' plain ``__repr__``.

Example:
    >>> import torch
    >>> from focuslens.heads import HeadScores
    >>> html = HeadScores(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), name="score")._repr_html_()
    >>> "L0H1" in html, "<script src=" in html
    (True, False)
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.io as pio
import torch
from plotly.offline import get_plotlyjs

from focuslens.evaluation.accuracy import ATTENTION_KINDS
from focuslens.evaluation.curves import wilson_interval
from focuslens.heads import ranked, str_head
from focuslens.plots.report import format_value

FIGURE_SIZE = {"width": 460, "height": 300}
"""The size of a card's figure, in pixels."""

_state = {"plotlyjs_sent": False}


def include_plotlyjs_again() -> None:
    """Make the next card carry plotly's JavaScript again (after clearing the one that did)."""
    _state["plotlyjs_sent"] = False


def plotlyjs_once() -> str:
    """plotly's JavaScript, inline, the first time in this kernel; then nothing.

    A widget that draws cards into an ``ipywidgets.Output`` displays this first, outside
    the widget: 4.8 MB inside an output widget stalls headless runners (nbclient waits
    for its full timeout)."""
    if _state["plotlyjs_sent"]:
        return ""
    _state["plotlyjs_sent"] = True
    return (
        '<script type="text/javascript">if (!window.Plotly) {\n' + get_plotlyjs() + "\n}</script>\n"
    )


_counter = iter(range(1_000_000_000))


def figure_html(fig: Any) -> str:
    """A small, offline ``<div>`` of a plotly figure (the JavaScript once per kernel)."""
    import uuid

    import plotly.graph_objects as go

    small = go.Figure(fig)  # a copy: the caller's figure keeps its size
    small.update_layout(**FIGURE_SIZE, margin={"l": 50, "r": 20, "t": 60, "b": 40})
    div = pio.to_html(
        small,
        full_html=False,
        include_plotlyjs=False,
        div_id=f"focuslens-{uuid.uuid4().hex[:12]}-{next(_counter)}",
        config={"displaylogo": False, "displayModeBar": False, "responsive": False},
    )
    return plotlyjs_once() + div


def _cell(value: Any) -> str:
    if isinstance(value, float) and not math.isnan(value):
        return html.escape(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(str(v) for v in value))
    return html.escape(format_value(value))


def numbers_table(numbers: Mapping[str, Any]) -> str:
    """Key numbers as a two-column HTML table."""
    rows = "".join(
        f'<tr><th style="text-align:left;padding:1px 8px 1px 0">{html.escape(str(k))}</th>'
        f'<td style="text-align:left">{_cell(v)}</td></tr>'
        for k, v in numbers.items()
    )
    return f'<table style="border-collapse:collapse;font-size:0.9em">{rows}</table>'


def frame_table(frame: pd.DataFrame, caption: str = "") -> str:
    """A small DataFrame as an HTML table (values rounded for reading)."""
    head = "".join(f'<th style="padding:1px 6px">{html.escape(str(c))}</th>' for c in frame)
    body = "".join(
        "<tr>" + "".join(f'<td style="padding:1px 6px">{_cell(v)}</td>' for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return (
        f'<table style="border-collapse:collapse;font-size:0.85em;margin-top:4px">{cap}'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def card(title: str, numbers: Mapping[str, Any], figure: Any = None, extra: str = "") -> str:
    """The card a result shows: title, key numbers (and ``extra`` HTML), a small figure."""
    fig = f"<div>{figure_html(figure)}</div>" if figure is not None else ""
    return (
        '<div class="focuslens-result" style="border:1px solid #ccd;border-radius:6px;'
        'padding:8px 12px;margin:4px 0;display:inline-block;max-width:100%">'
        f'<div style="font-weight:600;margin-bottom:6px">{html.escape(title)}</div>'
        '<div style="display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start">'
        f"<div>{numbers_table(numbers)}{extra}</div>{fig}</div></div>"
    )


# ---------------------------------------------------------------------- per result type
def top_heads_frame(table: torch.Tensor, k: int = 5, *, by_absolute: bool = False) -> pd.DataFrame:
    """The ``k`` best heads of a ``[n_layers, n_heads]`` table (by absolute value for signed
    effects), NaN ranked last and left out, with their values."""
    table = table.detach().float().cpu()
    order = ranked(table.abs() if by_absolute else table)
    rows = [
        {"head": str_head(h), "value": float(table[h])}
        for h in order[:k]
        if not math.isnan(float(table[h]))
    ]
    return pd.DataFrame(rows, columns=["head", "value"])


def contextual_scores_html(scores: Any) -> str:
    """The card of a :class:`~focuslens.ContextualScores`: top heads with their masses,
    mean masses, and the layer x head heatmap of the relevant mass."""
    n_scored = int((~torch.isnan(scores.relevant)).sum())  # NaN: no prompt had a relevant span
    top = scores.top_heads(min(5, n_scored)) if n_scored else []
    frame = pd.DataFrame(
        [
            {
                "head": str_head(h),
                **{kind: float(scores[kind][h]) for kind in ("relevant", "distractors", "sink")},
            }
            for h in top
        ]
    )
    numbers = {
        "layers x heads": f"{scores.n_layers} x {scores.n_heads}",
        "examples": scores.n_examples,
        "query rows": scores.query,
        "best head": str_head(top[0]) if top else "",
        "mean relevant mass (all heads)": float(torch.nanmean(scores.relevant.float())),
    }
    return card(
        "ContextualScores: attention mass of the answer rows per head",
        numbers,
        scores.figure() if n_scored else None,
        frame_table(frame, "top heads by relevant mass"),
    )


def head_scores_html(result: Any) -> str:
    """The card of a :class:`~focuslens.heads.HeadScores` (or
    :class:`~focuslens.HeadEffects`): top heads (by absolute value when signed) and the
    heatmap."""
    values = result.values.detach().float().cpu()
    finite = values[~torch.isnan(values)]
    signed = bool(finite.numel() and finite.min() < 0)
    n = "" if result.per_example is None else int(result.per_example.shape[0])
    numbers = {
        "what": result.name,
        "layers x heads": f"{result.n_layers} x {result.n_heads}",
        "examples": n,
        "heads measured": int(finite.numel()),
    }
    for attr in ("method", "mode", "positions"):
        if hasattr(result, attr):
            numbers[attr] = getattr(result, attr)
    caption = "top heads by absolute value" if signed else "top heads"
    frame = top_heads_frame(values, by_absolute=signed).rename(columns={"value": result.name})
    return card(type(result).__name__, numbers, result.figure(), frame_table(frame, caption))


def eval_result_html(result: Any) -> str:
    """The card of an :class:`~focuslens.EvalResult`: accuracy with its 95 % Wilson
    interval, mean attention allocation, the first answers, and accuracy (with the
    attention on the relevant document, when measured) by gold position."""
    import plotly.graph_objects as go

    low, high = wilson_interval(result.accuracy, result.n)
    numbers: dict[str, Any] = {
        "examples": result.n,
        "accuracy": result.accuracy,
        "95% interval": f"{low:.3f} to {high:.3f}" if result.n else "",
    }
    if result.heads is not None:
        numbers["heads measured"] = ", ".join(str_head(h) for h in result.heads[:8]) + (
            " ..." if len(result.heads) > 8 else ""
        )
    frame = result.frame
    for kind in ATTENTION_KINDS:
        if f"attn_{kind}" in frame:
            numbers[f"attention on {kind}"] = float(frame[f"attn_{kind}"].mean())
    cols = [c for c in ("prediction", "answers", "correct") if c in frame]
    first = frame[cols].head(5)
    fig = None
    if result.n and "gold_position" in frame and frame["gold_position"].notna().any():
        by = result.summary()["by_gold_position"].dropna(subset=["gold_position"])
        fig = go.Figure(go.Bar(x=by["gold_position"], y=by["accuracy"], name="accuracy"))
        if "attn_relevant" in by:
            fig.add_trace(
                go.Scatter(
                    x=by["gold_position"],
                    y=by["attn_relevant"],
                    mode="lines+markers",
                    name="attention on relevant",
                )
            )
        fig.update_layout(
            title="by gold position",
            xaxis={"title": {"text": "gold position"}, "type": "category"},
            yaxis_range=[0, 1],
        )
    return card("EvalResult", numbers, fig, frame_table(first, "first answers"))


def directions_html(directions: Any) -> str:
    """The card of :class:`~focuslens.FocusDirections`: shape, hook point, ranked heads,
    norms, how they were made, and the heatmap of ``|d_q|``."""
    norms = directions.norms()
    numbers: dict[str, Any] = {
        "model shape": str(directions.shape),
        "hook point": directions.hook_point,
        "layers with directions": len(directions.layers or []),
        "ranked heads": len(directions.heads),
        "top heads": ", ".join(str_head(h) for h in directions.heads[:5]),
        "mean |d_q| per head": float(norms["q"].mean()),
        "mean |d_k| per head": float(norms["k"].mean()),
    }
    if directions.heads:
        top = directions.heads[:20]
        numbers[f"mean |d_q|, top {len(top)} heads"] = sum(float(norms["q"][h]) for h in top) / len(
            top
        )
    training = directions.training
    for key in ("method", "epochs", "lr", "n_prompts", "seed"):
        if key in training:
            numbers[f"training: {key}"] = training[key]
    for key in ("model", "source"):
        if directions.meta.get(key):
            numbers[key] = directions.meta[key]
    return card("FocusDirections", numbers, directions.figure())


def attention_map_html(amap: Any) -> str:
    """The card of an :class:`~focuslens.AttentionMap`: the mass of each head's answer rows
    on the relevant document, the distractors and the sink, and bars by document."""
    import plotly.graph_objects as go

    segments, values = amap.by_segment()
    mean = values.mean(dim=1)  # n_chosen x n_segments, over the answer rows
    rows = []
    for i, name in enumerate(amap.head_names()):
        mass = {"relevant": 0.0, "distractor": 0.0, "sink": 0.0}
        for j, seg in enumerate(segments):
            if seg.kind in mass:
                mass[seg.kind] += float(mean[i, j])
        rows.append({"head": name, **{f"{k} mass": v for k, v in mass.items()}})
    numbers = {
        "heads": ", ".join(amap.head_names()),
        "answer rows": len(amap.rows),
        "key positions": amap.n_keys,
        "query rows": amap.query,
    }
    fig = go.Figure(
        [
            go.Bar(x=[s.name for s in segments], y=mean[i].tolist(), name=name)
            for i, name in enumerate(amap.head_names())
        ]
    )
    fig.update_layout(
        title="attention of the answer rows by document",
        yaxis_title="mass",
        xaxis={"type": "category"},
        barmode="group",
    )
    return card(
        "AttentionMap", numbers, fig, frame_table(pd.DataFrame(rows), "mean over answer rows")
    )


def explorer_figure(view: Any) -> Any:
    """Bars of an :class:`~focuslens.evaluation.explore.ExplorerView`: the chosen heads'
    attention by document (mean over heads and answer rows), coloured by kind."""
    import plotly.graph_objects as go

    from focuslens.plots.attention import SPAN_COLOURS

    mean = view.mean_mass().tolist()
    fig = go.Figure(
        go.Bar(
            x=view.segments,
            y=mean,
            marker_color=[SPAN_COLOURS.get(k, "#999999") for k in view.kinds],
            hovertemplate="%{x}: %{y:.3f}<extra></extra>",
        )
    )
    heads = ", ".join(str_head(h) for h in view.heads)
    fig.update_layout(
        title=f"attention of {heads} by document",
        yaxis={"title": {"text": "mass"}, "range": [0, 1]},
        xaxis={"type": "category"},
        showlegend=False,
    )
    return fig


def explorer_view_html(view: Any) -> str:
    """The card of an :class:`~focuslens.evaluation.explore.ExplorerView`: the setting,
    the answer, the mass by kind, and the bars by document."""
    kinds = view.by_kind()
    numbers = {
        "heads": ", ".join(str_head(h) for h in view.heads),
        "alpha (steering)": view.alpha,
        "tau (split-softmax)": view.tau,
        "greedy answer": view.answer,
        "gold answers": view.answers,
        "correct": view.correct,
        "attention on relevant": kinds["relevant"],
        "attention on distractors": kinds["distractor"],
        "attention on sink": kinds["sink"],
    }
    return card("Explorer", numbers, explorer_figure(view))


__all__ = [
    "FIGURE_SIZE",
    "attention_map_html",
    "card",
    "contextual_scores_html",
    "directions_html",
    "eval_result_html",
    "explorer_figure",
    "explorer_view_html",
    "figure_html",
    "head_scores_html",
    "include_plotlyjs_again",
    "plotlyjs_once",
]
