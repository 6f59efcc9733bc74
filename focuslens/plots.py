"""Interactive plotly figures. Every function returns a ``go.Figure`` and never shows it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


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
            giving ``[n_layers, n_heads]`` tensors).
        kind: One kind, or several drawn side by side with a shared colour scale.
        top_k: How many of the best heads of each panel to mark.
        title: Figure title.
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not kinds:
        raise ValueError("kind must name at least one score kind")
    tables = [scores[k].detach().float().cpu() for k in kinds]
    zmax = max(float(t.max()) for t in tables)
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True)
    for col, (name, table) in enumerate(zip(kinds, tables), start=1):
        n_layers, n_heads = table.shape
        flat = table.flatten().tolist()
        ranks = _ranks(flat)
        text = [[f"rank {ranks[l * n_heads + h]}" for h in range(n_heads)] for l in range(n_layers)]
        fig.add_trace(
            go.Heatmap(
                z=table.tolist(),
                x=list(range(n_heads)),
                y=list(range(n_layers)),
                text=text,
                zmin=0,
                zmax=zmax,
                colorscale="Viridis",
                showscale=col == len(kinds),
                colorbar={"title": "attention mass"},
                hovertemplate=f"{name}<br>layer %{{y}}, head %{{x}}<br>score %{{z:.4f}}<br>%{{text}}<extra></extra>",
                name=name,
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
    fig.update_yaxes(title_text="layer", row=1, col=1, autorange="reversed")
    fig.update_layout(title=title or "Contextual scores per head", template="plotly_white")
    return fig


__all__ = ["head_scores"]
