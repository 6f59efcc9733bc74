"""The attention map figure: where chosen heads look in one prompt.

:func:`attention_map` measures (with :func:`focuslens.scores.attention.attention_map_data`, one
forward pass) and draws; :func:`attention_figure` draws an
:class:`~focuslens.scores.attention.AttentionMap` already measured (or loaded from a file).
Both are re-exported by :mod:`focuslens.plots`.

Layout: top, a heatmap with one row per answer token and one column per key token (or
per document at ``level="documents"``), the causal upper triangle left blank; bottom,
the mean over answer rows as bars coloured by span kind; a strip above the heatmap
marks the sink, the relevant document and the distractors; a dropdown switches heads.
Token columns carry unique labels (``"12:the"``), since plotly merges repeated
categories.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from focuslens.scores.attention import AttentionMap, attention_map_data
from focuslens.typing import Model

SPAN_COLOURS = {
    "relevant": "#009E73",
    "distractor": "#E69F00",
    "distractors": "#E69F00",
    "sink": "#CC79A7",
    "other": "#999999",
    "response": "#56B4E9",
}
"""Okabe-Ito colours of the span kinds (colour-blind safe)."""


def attention_map(
    model: Model,
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

    Measures with :func:`focuslens.scores.attention.attention_map_data` (one forward pass,
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
    """Draw an :class:`~focuslens.scores.attention.AttentionMap` (see :func:`attention_map`).

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


__all__ = [
    "SPAN_COLOURS",
    "attention_figure",
    "attention_map",
]
