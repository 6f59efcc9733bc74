"""A per-head result table: one number per attention head (:class:`HeadScores`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from focuslens.heads.intervals import bootstrap_ci
from focuslens.heads.ranking import ranked_top
from focuslens.typing import HeadTable, PerExampleHeadTable


@dataclass
class HeadScores:
    """One number per attention head, optionally per example.

    Attributes:
        values: ``[n_layers, n_heads]`` table (NaN for heads not measured).
        per_example: ``[n_examples, n_layers, n_heads]`` values, or None.
        name: What the number is (the value column of :meth:`to_dataframe`).
        meta: Provenance.
    """

    values: HeadTable
    per_example: PerExampleHeadTable | None = None
    name: str = "score"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.values, torch.Tensor) or self.values.dim() != 2:
            shape = getattr(self.values, "shape", type(self.values).__name__)
            raise ValueError(f"values must be a [n_layers, n_heads] tensor, got {shape}")
        if self.per_example is not None and (
            self.per_example.dim() != 3 or self.per_example.shape[1:] != self.values.shape
        ):
            raise ValueError(
                f"per_example has shape {tuple(self.per_example.shape)}, expected "
                f"[n_examples, {self.values.shape[0]}, {self.values.shape[1]}]"
            )

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def top_heads(self, k: int, *, largest: bool = True) -> list[tuple[int, int]]:
        """The ``k`` best heads, best first; raises when fewer than ``k`` have a value."""
        return ranked_top(self.values, k, largest=largest)

    def ci(
        self, level: float = 0.95, *, n_boot: int = 2000, seed: int = 0, method: str = "BCa"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bootstrap confidence interval, over examples, of each head's mean value
        (:func:`focuslens.heads.bootstrap_ci`): ``(low, high)``, each ``[n_layers,
        n_heads]``; NaN for heads not measured."""
        if self.per_example is None:
            raise ValueError(
                f"this {type(self).__name__} has no per-example values, so no interval over "
                "examples can be computed"
            )
        return bootstrap_ci(self.per_example, level=level, n_boot=n_boot, seed=seed, method=method)

    def to_dataframe(self, *, level: float | None = None, **ci_kwargs: Any) -> Any:
        """Long format: one row per head, columns ``layer``, ``head``, ``<name>``; with
        ``level`` (e.g. ``0.95``) also ``low`` and ``high``, the bootstrap interval
        (:meth:`ci`, with ``ci_kwargs``)."""
        import pandas as pd

        t = self.values.detach().float().cpu()
        low = high = None
        if level is not None:
            low, high = self.ci(level, **ci_kwargs)
        rows = []
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                row = {"layer": l, "head": h, self.name: float(t[l, h])}
                if low is not None:
                    row["low"], row["high"] = float(low[l, h]), float(high[l, h])
                rows.append(row)
        return pd.DataFrame(rows)

    def figure(self, *, top_k: int = 5, title: str | None = None, ci: float | None = None) -> Any:
        """A layer x head heatmap (plotly ``go.Figure``), the ``top_k`` heads marked.

        Signed values (ablation effects) use :func:`focuslens.plots.head_effects`
        (red-blue centred at 0, heads ranked by absolute value); non-negative ones
        :func:`focuslens.plots.head_scores`. ``ci=0.95`` puts each head's bootstrap
        interval (:meth:`ci`) in its hover text.
        """
        from focuslens import plots

        interval = None if ci is None else self.ci(ci)
        finite = self.values[~torch.isnan(self.values)]
        if finite.numel() and bool(finite.min() < 0):
            return plots.head_effects(
                self.values, top_k=top_k, label=self.name, title=title, ci=interval
            )
        return plots.head_scores(
            {self.name: self.values}, kind=self.name, top_k=top_k, title=title, ci=interval
        )

    def _repr_html_(self) -> str:
        """A notebook card: top heads and the heatmap (:mod:`focuslens.plots.notebook`)."""
        from focuslens.plots import notebook

        return notebook.head_scores_html(self)

    def __repr__(self) -> str:
        n = "" if self.per_example is None else f", n_examples={self.per_example.shape[0]}"
        return f"{type(self).__name__}(name={self.name!r}, shape={tuple(self.values.shape)}{n})"


__all__ = [
    "HeadScores",
]
