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
measuring function :func:`focuslens.scores.attention.attention_map_data` and draws its result
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

from focuslens.evaluation.curves import (
    ALLOCATION_KINDS,
    accuracy_table,
    allocation_table,
    reference_point,
    x_sort_key,
)
from focuslens.heads import ranked, ranks
from focuslens.plots.attention import SPAN_COLOURS

SERIES_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


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
    ci: Any = None,
) -> go.Figure:
    """Layer x head heatmap(s) of contextual scores, the top-k heads marked.

    Args:
        scores: A :class:`focuslens.ContextualScores` (or anything indexable by kind
            giving ``[n_layers, n_heads]`` tensors or arrays, e.g. ``{"relevant":
            scores.relevant, "gold prompt": gold.relevant}``).
        kind: One kind or named span, or several drawn side by side with a shared
            colour scale.
        top_k: How many of the best heads of each panel to mark.
        title: Figure title.
        ci: Intervals shown in each head's hover text: a level such as ``0.95`` (then
            ``scores.ci(kind, level=...)`` computes them), a ``(low, high)`` pair of
            tables (one panel), or ``{kind: (low, high)}``.
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not kinds:
        raise ValueError("kind must name at least one score kind")
    tables = [_as_table(scores[k], k) for k in kinds]
    intervals = _intervals(ci, kinds, scores)
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
            interval=intervals.get(name),
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
    interval: tuple[torch.Tensor, torch.Tensor] | None = None,
    **heat: Any,
) -> None:
    n_layers, n_heads = table.shape
    by = rank_by if rank_by is not None else table
    order = ranks(by)
    text = [[f"rank {int(order[l, h])}" for h in range(n_heads)] for l in range(n_layers)]
    if interval is not None:
        low, high = (_as_table(t, f"{name} interval") for t in interval)
        if low.shape != table.shape or high.shape != table.shape:
            raise ValueError(
                f"the interval of {name!r} has shapes {tuple(low.shape)} and "
                f"{tuple(high.shape)}, expected {tuple(table.shape)}"
            )
        for l in range(n_layers):
            for h in range(n_heads):
                text[l][h] += f"<br>interval [{float(low[l, h]):.4f}, {float(high[l, h]):.4f}]"
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
    k = min(top_k, by.numel())
    best = ranked(by)[:k]
    fig.add_trace(
        go.Scatter(
            x=[h for _, h in best],
            y=[l for l, _ in best],
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
    ci: Any = None,
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
        ci: Intervals shown in each head's hover text: a ``(low, high)`` pair of tables
            (one panel) or ``{name: (low, high)}``; a level such as ``0.95`` when the
            panels are :class:`~focuslens.HeadScores` with per-example values.
    """
    if not isinstance(effects, Mapping):
        effects = {label: effects}
    if not effects:
        raise ValueError("effects is empty; give a table or {name: table}")
    intervals = _intervals(ci, list(effects), effects)
    effects = {name: t.values if hasattr(t, "per_example") else t for name, t in effects.items()}
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
            interval=intervals.get(name),
        )
    fig.update_yaxes(title_text="layer", row=1, col=1, autorange="reversed")
    fig.update_layout(title=title or f"Per-head {label}", template="plotly_white")
    return fig


def _intervals(ci: Any, names: list[str], source: Any) -> dict[str, Any]:
    """``{panel name: (low, high)}`` from the ``ci`` argument of the head heatmaps."""
    if ci is None:
        return {}
    if isinstance(ci, float):
        out = {}
        for name in names:
            item = source[name]
            if hasattr(source, "ci") and not hasattr(item, "ci"):
                out[name] = source.ci(name, level=ci)
            elif hasattr(item, "ci"):
                out[name] = item.ci(ci)
            else:
                raise ValueError(
                    f"ci={ci} needs per-example values to compute intervals, but panel "
                    f"{name!r} is a plain table; pass (low, high) tables instead"
                )
        return out
    if isinstance(ci, Mapping):
        unknown = [n for n in ci if n not in names]
        if unknown:
            raise ValueError(f"ci names panels {unknown} that are not drawn ({names})")
        return dict(ci)
    if isinstance(ci, (tuple, list)) and len(ci) == 2:
        if len(names) != 1:
            raise ValueError(
                f"one (low, high) pair for {len(names)} panels; give {{panel: (low, high)}}"
            )
        return {names[0]: tuple(ci)}
    raise ValueError(
        f"ci must be a level such as 0.95, a (low, high) pair or {{panel: (low, high)}}, got "
        f"{type(ci).__name__}"
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
            :func:`focuslens.evaluation.curves.allocation_table`).
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
            :mod:`focuslens.evaluation.curves`.
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
    "accuracy_curves",
    "allocation",
    "head_effects",
    "head_scores",
]
