"""The result of scoring heads: :class:`ContextualScores`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from focuslens.heads import bootstrap_ci, ranked_top
from focuslens.typing import HeadTable, PerExampleHeadTable

KINDS = ("relevant", "distractors", "distractor_max", "sink", "other")
"""The score kinds of a :class:`ContextualScores`, in order."""


@dataclass
class ContextualScores:
    """Per-head attention mass of the query rows, averaged over examples.

    Attributes:
        relevant: ``[n_layers, n_heads]`` mass on the relevant span.
        distractors: ``[n_layers, n_heads]`` mass on all distractor spans together.
        distractor_max: ``[n_layers, n_heads]`` mass on the largest single distractor.
        sink: ``[n_layers, n_heads]`` mass on the first ``sink`` positions.
        other: ``[n_layers, n_heads]`` mass on every other position.
        per_example: kind (or span name) -> ``[n_examples, n_layers, n_heads]``.
            ``relevant`` is NaN for examples without a relevant span, a named span's mass
            for examples without that span; means skip those.
        query: The query-row convention used.
        n_sink: The number of sink positions.
        meta: Free-form provenance (model name, prompt count, ...).
        span_names: The named spans of the prompts (``LabeledPrompt(spans=...)``), whose
            masses :meth:`mass` gives like the kinds.
    """

    relevant: HeadTable
    distractors: HeadTable
    distractor_max: HeadTable
    sink: HeadTable
    other: HeadTable
    per_example: dict[str, PerExampleHeadTable]
    query: str = "response"
    n_sink: int = 2
    meta: dict[str, Any] = field(default_factory=dict)
    span_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(self.relevant.shape)
        if len(shape) != 2:
            raise ValueError(f"relevant must be [n_layers, n_heads], got shape {shape}")
        self.span_names = tuple(self.span_names)
        for name in self.span_names:
            if name in KINDS:
                raise ValueError(f"span name {name!r} is taken by a score kind {KINDS}")
            got = tuple(self.per_example[name].shape) if name in self.per_example else None
            if got is None or got[1:] != shape:
                raise ValueError(
                    f"per_example[{name!r}] has shape {got}, expected [n_examples, {shape[0]}, "
                    f"{shape[1]}] for the named span {name!r}"
                )
        for kind in KINDS:
            got = tuple(getattr(self, kind).shape)
            if got != shape:
                raise ValueError(f"{kind} has shape {got}, expected {shape}")
            if kind in self.per_example and tuple(self.per_example[kind].shape[1:]) != shape:
                raise ValueError(
                    f"per_example[{kind!r}] has shape {tuple(self.per_example[kind].shape)}, "
                    f"expected [n_examples, {shape[0]}, {shape[1]}]"
                )

    @classmethod
    def from_per_example(
        cls, per_example: dict[str, torch.Tensor], **kwargs: Any
    ) -> ContextualScores:
        """Average per-example tables (NaN-aware) into a ContextualScores."""
        means = {k: torch.nanmean(per_example[k], dim=0) for k in KINDS}
        return cls(**means, per_example=per_example, **kwargs)

    @property
    def n_layers(self) -> int:
        return int(self.relevant.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.relevant.shape[1])

    @property
    def n_examples(self) -> int:
        return int(self.per_example["relevant"].shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        """Every name :meth:`mass` accepts: the score kinds, then the named spans."""
        return (*KINDS, *self.span_names)

    def __getitem__(self, kind: str) -> HeadTable:
        return self.mass(kind)

    def mass(self, name: str, *, per_example: bool = False) -> Tensor:
        """The attention mass on a score kind or a named span.

        Args:
            name: A kind (``"relevant"``, ``"sink"``, ...) or a named span of the prompts
                (``"question"``, ...).
            per_example: Return ``[n_examples, n_layers, n_heads]`` instead of the mean
                ``[n_layers, n_heads]`` (NaN where an example lacks the span).
        """
        if name not in self.names:
            raise KeyError(
                f"unknown score kind or span {name!r}; choose from {list(self.names)}"
                + ("" if self.span_names else " (the prompts had no named spans)")
            )
        if per_example:
            return self.per_example[name]
        if name in KINDS:
            return getattr(self, name)
        return _nanmean(self.per_example[name])

    def ci(
        self,
        name: str = "relevant",
        *,
        level: float = 0.95,
        n_boot: int = 2000,
        seed: int = 0,
        method: str = "BCa",
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap confidence interval, over prompts, of each head's mean mass on
        ``name`` (:func:`focuslens.heads.bootstrap_ci`): ``(low, high)``, each
        ``[n_layers, n_heads]``."""
        return bootstrap_ci(
            self.mass(name, per_example=True), level=level, n_boot=n_boot, seed=seed, method=method
        )

    def top_heads(self, k: int, by: str = "relevant") -> list[tuple[int, int]]:
        """The ``k`` best heads by a score kind or named span, best first.

        Ties are broken by (layer, head), ascending, so the order is deterministic. Heads
        without a score (NaN) are never ranked: a ``k`` that would reach one is refused.
        """
        return ranked_top(self[by], k, by=by)

    def to_dataframe(self, *, level: float | None = None, **ci_kwargs: Any) -> Any:
        """Long format: one row per (layer, head, kind) with the mean score; the named
        spans follow the kinds. With ``level`` (e.g. ``0.95``), bootstrap interval
        columns ``low`` and ``high`` (:meth:`ci`, with ``ci_kwargs``)."""
        import pandas as pd

        rows = []
        for kind in self.names:
            table = self[kind]
            low = high = None
            if level is not None:
                low, high = self.ci(kind, level=level, **ci_kwargs)
            for layer in range(self.n_layers):
                for head in range(self.n_heads):
                    row = {"layer": layer, "head": head, "kind": kind}
                    row["score"] = float(table[layer, head])
                    if low is not None:
                        row["low"], row["high"] = float(low[layer, head]), float(high[layer, head])
                    rows.append(row)
        return pd.DataFrame(rows)

    def save(self, path: str | Path) -> None:
        """Save to a safetensors file (tensors) with JSON metadata."""
        tensors = {
            f"per_example.{k}": v.detach().float().cpu().contiguous()
            for k, v in self.per_example.items()
        }
        meta = {
            "query": self.query,
            "n_sink": self.n_sink,
            "meta": self.meta,
            "span_names": list(self.span_names),
            "format": "focuslens.ContextualScores/1",
        }
        save_file(tensors, str(path), metadata={"focuslens": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> ContextualScores:
        """Load what :meth:`save` wrote."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("focuslens")
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ValueError(f"{path} is not a readable ContextualScores file: {exc}") from None
        if header is None:
            raise ValueError(
                f"{path} has no focuslens metadata; was it written by ContextualScores.save?"
            )
        meta = json.loads(header)
        per_example = {
            k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("per_example.")
        }
        missing = [k for k in KINDS if k not in per_example]
        if missing:
            raise ValueError(f"{path} lacks the score kinds {missing}")
        return cls.from_per_example(
            per_example,
            query=meta["query"],
            n_sink=meta["n_sink"],
            meta=meta.get("meta", {}),
            span_names=tuple(meta.get("span_names", ())),
        )

    def figure(self, kind: str = "relevant", **kwargs: Any) -> Any:
        """A layer x head heatmap of one score kind or named span (a plotly ``go.Figure``);
        ``ci=0.95`` adds each head's bootstrap interval to its hover text."""
        from focuslens import plots

        return plots.head_scores(self, kind=kind, **kwargs)

    def _repr_html_(self) -> str:
        """A notebook card: key numbers and the heatmap (:mod:`focuslens.plots.notebook`)."""
        from focuslens.plots import notebook

        return notebook.contextual_scores_html(self)

    def __repr__(self) -> str:
        n_scored = int((~torch.isnan(self.relevant)).sum())
        top = (
            ", ".join(f"L{l}H{h}" for l, h in self.top_heads(min(5, n_scored))) if n_scored else ""
        )
        spans = f", spans={list(self.span_names)}" if self.span_names else ""
        return (
            f"ContextualScores(n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"n_examples={self.n_examples}, query={self.query!r}, top=[{top}]{spans})"
        )


def _nanmean(x: Tensor) -> Tensor:
    """Mean over the first axis, skipping NaN (all-NaN: NaN, without a warning)."""
    return torch.nanmean(x, dim=0)


__all__ = [
    "KINDS",
    "ContextualScores",
]
