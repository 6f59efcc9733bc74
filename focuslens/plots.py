"""Interactive plotly figures. Every function returns a ``go.Figure`` and never shows it.

Which plot for which question?

* :func:`head_scores`: which heads are contextual? A layer x head heatmap of
  :class:`~focuslens.ContextualScores` (several kinds side by side, one colour scale).
* :func:`head_effects`: do those heads matter? A layer x head heatmap of a signed
  effect (ablation, attribution) on a diverging scale centred at zero.
* :func:`attention_map`: where does a head look in one prompt? The attention of the
  answer rows over the prompt's tokens, spans marked, one head at a time (dropdown).
  Long prompts are summed by document (``level="documents"``), and the token view can
  be zoomed to a window (``window=(start, end)`` or ``"relevant"``).
* :func:`allocation`: where does the attention go as an intervention grows? Mass on
  the relevant document, distractors, sink and the rest, stacked, against alpha or tau.
* :func:`accuracy_curves`: does it help? Accuracy against alpha, number of heads,
  gold position or number of documents, with 95 % Wilson intervals from the number of
  examples and the baseline / gold-only references.

Plots never run a model themselves except :func:`attention_map`, which calls the
measuring function :func:`focuslens.attention.attention_map_data` and draws its result
(:func:`attention_figure`). Colours: Viridis for magnitudes, red-blue for signed
effects, and the Okabe-Ito palette for spans, all legible in greyscale print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from focuslens.attention import AttentionMap, attention_map_data
from focuslens.curves import (
    ALLOCATION_KINDS,
    accuracy_table,
    allocation_table,
    reference_point,
    x_sort_key,
)

SPAN_COLOURS = {
    "relevant": "#009E73",
    "distractor": "#E69F00",
    "distractors": "#E69F00",
    "sink": "#CC79A7",
    "other": "#999999",
    "response": "#56B4E9",
}
"""Okabe-Ito colours of the span kinds (colour-blind safe)."""

SERIES_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def _as_table(value: Any, name: str) -> torch.Tensor:
    """A ``[n_layers, n_heads]`` float CPU tensor from a tensor, array or nested list."""
    table = torch.as_tensor(
        value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value)
    ).float()
    if table.dim() != 2:
        raise ValueError(
            f"{name} must be a [n_layers, n_heads] table, got shape {tuple(table.shape)}"
        )
    return table


def head_scores(
    scores: Any,
    kind: str | Sequence[str] = "relevant",
    *,
    top_k: int = 5,
    title: str | None = None,
) -> go.Figure:
    """Layer x head heatmap(s) of contextual scores, the top-k heads marked.

    Args:
        scores: A :class:`focuslens.ContextualScores` (or anything indexable by kind
            giving ``[n_layers, n_heads]`` tensors or arrays, e.g. ``{"relevant":
            scores.relevant, "gold prompt": gold.relevant}``).
        kind: One kind, or several drawn side by side with a shared colour scale.
        top_k: How many of the best heads of each panel to mark.
        title: Figure title.
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not kinds:
        raise ValueError("kind must name at least one score kind")
    tables = [_as_table(scores[k], k) for k in kinds]
    zmax = max(float(t.nan_to_num(0).max()) for t in tables)
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True)
    for col, (name, table) in enumerate(zip(kinds, tables), start=1):
        _add_head_heatmap(
            fig,
            table,
            name,
            col,
            top_k,
            zmin=0,
            zmax=zmax,
            colorscale="Viridis",
            show_scale=col == len(kinds),
            colorbar_title="attention mass",
        )
    fig.update_yaxes(title_text="layer", row=1, col=1, autorange="reversed")
    fig.update_layout(title=title or "Contextual scores per head", template="plotly_white")
    return fig


def _add_head_heatmap(
    fig: go.Figure,
    table: torch.Tensor,
    name: str,
    col: int,
    top_k: int,
    *,
    rank_by: torch.Tensor | None = None,
    show_scale: bool,
    colorbar_title: str,
    **heat: Any,
) -> None:
    n_layers, n_heads = table.shape
    flat = (rank_by if rank_by is not None else table).nan_to_num(-float("inf")).flatten().tolist()
    ranks = _ranks(flat)
    text = [[f"rank {ranks[l * n_heads + h]}" for h in range(n_heads)] for l in range(n_layers)]
    fig.add_trace(
        go.Heatmap(
            z=table.tolist(),
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            text=text,
            showscale=show_scale,
            colorbar={"title": colorbar_title},
            hovertemplate=f"{name}<br>layer %{{y}}, head %{{x}}<br>value %{{z:.4f}}<br>%{{text}}<extra></extra>",
            name=name,
            **heat,
        ),
        row=1,
        col=col,
    )
    k = min(top_k, len(flat))
    best = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]
    fig.add_trace(
        go.Scatter(
            x=[i % n_heads for i in best],
            y=[i // n_heads for i in best],
            mode="markers+text",
            text=[str(r) for r in range(1, k + 1)],
            textposition="middle center",
            textfont={"color": "white", "size": 9},
            marker={"symbol": "square-open", "size": 16, "color": "white", "line": {"width": 2}},
            name=f"top {k} ({name})",
            hoverinfo="skip",
            showlegend=False,
        ),
        row=1,
        col=col,
    )
    fig.update_xaxes(title_text="head", row=1, col=col)


def head_effects(
    effects: Any,
    *,
    top_k: int = 5,
    label: str = "effect",
    title: str | None = None,
) -> go.Figure:
    """Layer x head heatmap(s) of a signed per-head effect (ablation, attribution).

    Red-blue, centred at zero, one symmetric scale for all panels; the ``top_k`` heads
    of largest absolute effect are marked and ranked.

    Args:
        effects: A ``[n_layers, n_heads]`` tensor or array, or ``{name: table}`` for
            several panels side by side (e.g. ``{"zero ablation": ..., "attribution":
            ...}``).
        top_k: How many heads to mark per panel.
        label: The colour bar's title (e.g. ``"change in log p(answer)"``).
        title: Figure title.
    """
    if not isinstance(effects, Mapping):
        effects = {label: effects}
    if not effects:
        raise ValueError("effects is empty; give a table or {name: table}")
    tables = {name: _as_table(t, name) for name, t in effects.items()}
    bound = max(float(t.abs().nan_to_num(0).max()) for t in tables.values()) or 1.0
    fig = make_subplots(rows=1, cols=len(tables), subplot_titles=list(tables), shared_yaxes=True)
    for col, (name, table) in enumerate(tables.items(), start=1):
        _add_head_heatmap(
            fig,
            table,
            name,
            col,
            top_k,
            rank_by=table.abs(),
            zmin=-bound,
            zmax=bound,
            zmid=0,
            colorscale="RdBu_r",
            show_scale=col == len(tables),
            colorbar_title=label,
        )
    fig.update_yaxes(title_text="layer", row=1, col=1, autorange="reversed")
    fig.update_layout(title=title or f"Per-head {label}", template="plotly_white")
    return fig


# ---------------------------------------------------------------------- attention maps
def attention_map(
    model: Any,
    prompt: Any,
    heads: Any,
    *,
    query: str | None = None,
    sink: int = 2,
    level: str = "auto",
    max_tokens: int = 300,
    window: tuple[int, int] | str | None = None,
    title: str | None = None,
) -> go.Figure:
    """The attention of a prompt's answer rows over its tokens, one head at a time.

    Measures with :func:`focuslens.attention.attention_map_data` (one forward pass,
    only the chosen heads' answer rows kept) and draws with :func:`attention_figure`.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompt: A :class:`~focuslens.LabeledPrompt`; its response tokens are the rows.
        heads: ``(layer, head)`` pairs; the dropdown switches between them.
        query: ``"response"``, ``"predict"`` or ``"last"`` (default: response if any).
        sink: Leading positions counted as the sink.
        level: ``"tokens"``, ``"documents"`` (each row summed per document) or
            ``"auto"`` (documents when there are more than ``max_tokens`` keys and no
            window).
        max_tokens: See ``level``.
        window: Key positions ``(start, end)`` to show at token level, or
            ``"relevant"`` for the relevant document with 8 tokens of context.
        title: Figure title.
    """
    amap = attention_map_data(model, prompt, heads, query=query, sink=sink)
    return attention_figure(amap, level=level, max_tokens=max_tokens, window=window, title=title)


def _resolve_window(amap: AttentionMap, window: Any, pad: int = 8) -> AttentionMap:
    if window is None:
        return amap
    if window == "relevant":
        if amap.relevant is None:
            raise ValueError("window='relevant' needs a prompt with a relevant span")
        start, end = amap.relevant
        return amap.window(
            amap.offset + max(0, start - pad), amap.offset + min(amap.n_keys, end + pad)
        )
    if isinstance(window, str) or len(window) != 2:
        raise ValueError(f"window must be (start, end) or 'relevant', got {window!r}")
    return amap.window(int(window[0]), int(window[1]))


def _columns(
    amap: AttentionMap, level: str
) -> tuple[list[str], list[str], list[str], torch.Tensor]:
    """Column labels, kinds, hover notes and the ``[n_chosen, n_rows, n_columns]`` values
    (NaN where a key lies after the row: the masked causal triangle)."""
    if level == "documents":
        segments, values = amap.by_segment()
        notes = [f"{len(s.positions)} tokens summed" for s in segments]
        return [s.name for s in segments], [s.kind for s in segments], notes, values
    kind_of = {p: s.kind for s in amap.segments() for p in s.positions}
    kinds = [kind_of.get(k, "other") for k in range(amap.n_keys)]
    absolute = torch.arange(amap.n_keys) + amap.offset
    future = absolute[None, :] > torch.tensor(amap.rows)[:, None]
    values = amap.pattern.masked_fill(future[None], float("nan"))
    notes = [f"token {amap.tokens[k]!r}" for k in range(amap.n_keys)]
    return amap.labels(), kinds, notes, values


def attention_figure(
    amap: AttentionMap,
    *,
    level: str = "auto",
    max_tokens: int = 300,
    window: tuple[int, int] | str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Draw an :class:`~focuslens.attention.AttentionMap` (see :func:`attention_map`).

    Top: a heatmap, one row per answer token, one column per key token (or document),
    the causal upper triangle left blank. Bottom: the mean over answer rows, bars
    coloured by span kind. A strip above the heatmap marks the sink, the relevant
    document and the distractors. The dropdown shows one head at a time.
    """
    if level not in ("auto", "tokens", "documents"):
        raise ValueError(f"level must be 'auto', 'tokens' or 'documents', got {level!r}")
    amap = _resolve_window(amap, window)
    if level == "auto":
        level = "documents" if window is None and amap.n_keys > max_tokens else "tokens"
    labels, kinds, notes, values = _columns(amap, level)
    names = amap.head_names()
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04
    )
    row_labels = amap.row_labels()
    for i, name in enumerate(names):
        z = values[i].tolist()
        z = [[None if v != v else v for v in row] for row in z]  # NaN -> blank cell
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=labels,
                y=row_labels,
                customdata=[notes] * len(row_labels),
                colorscale="Viridis",
                zmin=0,
                colorbar={"title": "attention", "len": 0.65, "y": 0.66},
                hovertemplate=f"{name}<br>answer row %{{y}}<br>key %{{x}} "
                "(%{customdata})<br>attention %{z:.4f}<extra></extra>",
                name=name,
                visible=i == 0,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=labels,
                y=torch.nan_to_num(values[i], nan=0.0).mean(0).tolist(),
                marker={"color": [SPAN_COLOURS.get(k, "#999999") for k in kinds]},
                customdata=[[k, n] for k, n in zip(kinds, notes)],
                hovertemplate=f"{name}<br>%{{x}}: %{{customdata[0]}} (%{{customdata[1]}})"
                "<br>mean attention %{y:.4f}<extra></extra>",
                name=f"{name} mean",
                showlegend=False,
                visible=i == 0,
            ),
            row=2,
            col=1,
        )
    _mark_spans(fig, kinds, labels if level == "documents" else None)
    head_title = title or f"Attention of the answer rows ({level})"
    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [
                {"visible": [j // 2 == i for j in range(2 * len(names))]},
                {"title": {"text": f"{head_title}: {name}"}},
            ],
        }
        for i, name in enumerate(names)
    ]
    fig.update_layout(
        title={"text": f"{head_title}: {names[0]}"},
        template="plotly_white",
        updatemenus=[
            {
                "buttons": buttons,
                "x": 1.0,
                "xanchor": "right",
                "y": 1.18,
                "yanchor": "top",
                "showactive": True,
            }
        ],
        margin={"t": 110},
        height=520,
    )
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_xaxes(
        type="category",
        title_text="key" if level == "tokens" else "segment",
        tickangle=-60,
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="answer row", type="category", row=1, col=1)
    fig.update_yaxes(title_text="mean", row=2, col=1)
    return fig


def _runs(kinds: list[str]) -> list[tuple[int, int, str]]:
    """Maximal runs ``(start, end, kind)`` of equal adjacent kinds."""
    runs: list[tuple[int, int, str]] = []
    for i, kind in enumerate(kinds):
        if runs and runs[-1][2] == kind and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1, kind)
        else:
            runs.append((i, i + 1, kind))
    return runs


def _mark_spans(fig: go.Figure, kinds: list[str], segment_names: list[str] | None) -> None:
    """A coloured strip above the heatmap (category positions), labelled."""
    n_distractors = 0
    for start, end, kind in _runs(kinds):
        if kind in ("other", "response"):
            continue
        fig.add_shape(
            type="rect",
            xref="x",
            yref="paper",
            x0=start - 0.5,
            x1=end - 0.5,
            y0=1.0,
            y1=1.035,
            fillcolor=SPAN_COLOURS[kind],
            line={"width": 0},
        )
        if kind == "distractor":
            n_distractors += 1
        label = {"relevant": "relevant", "sink": "sink"}.get(kind, f"D{n_distractors}")
        if kind == "distractor" and len(kinds) > 40:
            continue  # too many to label legibly; the colours and hover still tell
        fig.add_annotation(
            x=(start + end - 1) / 2,
            y=1.04,
            xref="x",
            yref="paper",
            text=label,
            showarrow=False,
            yanchor="bottom",
            font={"size": 10},
        )


# ---------------------------------------------------------------------- sweeps
def allocation(
    results: Any,
    *,
    x: str = "alpha",
    kinds: Sequence[str] = ALLOCATION_KINDS,
    title: str | None = None,
) -> go.Figure:
    """Attention mass on relevant / distractors / sink / other against a swept value, stacked.

    Args:
        results: ``{x: EvalResult}`` from ``focuslens.evaluate(..., heads=...)``, or a
            DataFrame with a column ``x`` and ``attn_<kind>`` columns (see
            :func:`focuslens.curves.allocation_table`).
        x: The swept value (``"alpha"``, ``"tau"``, ``"k"``); the x-axis title.
        kinds: The kinds to stack, bottom first.
        title: Figure title.
    """
    table = allocation_table(results, x=x, kinds=kinds)
    xs, categorical = _x_values(table["x"])
    fig = go.Figure()
    for kind in kinds:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=table[kind].tolist(),
                name=kind,
                mode="lines+markers",
                stackgroup="mass",
                line={"color": SPAN_COLOURS.get(kind, "#999999")},
                customdata=table["n"].tolist(),
                hovertemplate=f"{x}=%{{x}}<br>{kind}: %{{y:.3f}}<br>n=%{{customdata}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title or f"Attention allocation of the chosen heads against {x}",
        template="plotly_white",
        xaxis={"title": x, "type": "category" if categorical else "linear"},
        yaxis={"title": "attention mass (mean over answer tokens and heads)"},
    )
    return fig


def _x_values(col: Any) -> tuple[list[Any], bool]:
    values = list(col)
    categorical = any(isinstance(v, str) for v in values)
    return ([str(v) for v in values] if categorical else values), categorical


def accuracy_curves(
    curves: Any,
    *,
    x: str = "alpha",
    baseline: Any = None,
    gold_only: Any = None,
    confidence: float = 0.95,
    title: str | None = None,
) -> go.Figure:
    """Accuracy against a swept value, one line per series, with Wilson intervals.

    Args:
        curves: ``{series: {x: EvalResult}}`` (e.g. ``{"top-k": {...}, "random": {...}}``
            for k heads), or ``{series: EvalResult}`` grouped by the column ``x``
            (``"gold_position"``, ``"n_documents"``), or a DataFrame: see
            :mod:`focuslens.curves`.
        x: The swept value or grouping column; the x-axis title.
        baseline: A reference drawn as a dashed horizontal line (an ``EvalResult``,
            ``(accuracy, n)`` or a number), or a series grouped like ``curves``.
        gold_only: The same, for the gold-only prompt.
        confidence: Level of the error bars.
        title: Figure title.
    """
    table = accuracy_table(curves, x=x, confidence=confidence)
    fig = go.Figure()
    for i, (series, group) in enumerate(table.groupby("series", sort=False)):
        _add_curve(fig, group, str(series), SERIES_COLOURS[i % len(SERIES_COLOURS)], x)
    for name, ref, colour in (
        ("baseline", baseline, "#000000"),
        ("gold only", gold_only, "#009E73"),
    ):
        if ref is not None:
            _add_reference(fig, ref, name, colour, x, confidence)
    categorical = any(isinstance(v, str) for v in table["x"])
    fig.update_layout(
        title=title or f"Accuracy against {x}",
        template="plotly_white",
        xaxis={"title": x, "type": "category" if categorical else "linear"},
        yaxis={
            "title": f"accuracy ({round(confidence * 100)}% Wilson interval)",
            "range": [-0.02, 1.02],
        },
    )
    return fig


def _add_curve(fig: go.Figure, group: Any, name: str, colour: str, x: str, dash: str = "solid"):
    group = group.sort_values("x", key=x_sort_key, kind="stable")
    xs, _ = _x_values(group["x"])
    acc = group["accuracy"].to_numpy(dtype=float)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=acc.tolist(),
            name=name,
            mode="lines+markers",
            line={"color": colour, "dash": dash},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": np.nan_to_num(group["high"].to_numpy(dtype=float) - acc).tolist(),
                "arrayminus": np.nan_to_num(acc - group["low"].to_numpy(dtype=float)).tolist(),
                "color": colour,
            },
            customdata=group[["n", "low", "high"]].to_numpy(dtype=float).tolist(),
            hovertemplate=f"{name}<br>{x}=%{{x}}<br>accuracy %{{y:.3f}} "
            "[%{customdata[1]:.3f}, %{customdata[2]:.3f}]<br>n=%{customdata[0]}<extra></extra>",
        )
    )


def _add_reference(fig: go.Figure, ref: Any, name: str, colour: str, x: str, confidence: float):
    try:
        point = reference_point(ref, name, confidence)
    except ValueError:
        table = accuracy_table({name: ref}, x=x, confidence=confidence)
        _add_curve(fig, table, name, colour, x, dash="dash")
        return
    acc, n = point["accuracy"], point["n"]
    label = f"{name} {acc:.2f}" + (f" (n={n})" if n else "")
    fig.add_hline(
        y=acc,
        line={"color": colour, "dash": "dash", "width": 1.5},
        annotation_text=label,
        annotation_position="top left",
    )
    # An invisible trace so that the reference has a legend entry and hover.
    fig.add_trace(
        go.Scatter(
            x=[None], y=[None], mode="lines", name=label, line={"color": colour, "dash": "dash"}
        )
    )


__all__ = [
    "SPAN_COLOURS",
    "accuracy_curves",
    "allocation",
    "attention_figure",
    "attention_map",
    "head_effects",
    "head_scores",
]
