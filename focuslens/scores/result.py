"""The result of scoring heads: :class:`ContextualScores`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from focuslens.heads import ranked_top
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
        per_example: kind -> ``[n_examples, n_layers, n_heads]``. ``relevant`` is NaN
            for examples without a relevant span; means skip those.
        query: The query-row convention used.
        n_sink: The number of sink positions.
        meta: Free-form provenance (model name, prompt count, ...).
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

    def __post_init__(self) -> None:
        shape = tuple(self.relevant.shape)
        if len(shape) != 2:
            raise ValueError(f"relevant must be [n_layers, n_heads], got shape {shape}")
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

    def __getitem__(self, kind: str) -> HeadTable:
        if kind not in KINDS:
            raise KeyError(f"unknown score kind {kind!r}; choose from {KINDS}")
        return getattr(self, kind)

    def top_heads(self, k: int, by: str = "relevant") -> list[tuple[int, int]]:
        """The ``k`` best heads by a score kind, best first.

        Ties are broken by (layer, head), ascending, so the order is deterministic. Heads
        without a score (NaN) are never ranked: a ``k`` that would reach one is refused.
        """
        return ranked_top(self[by], k, by=by)

    def to_dataframe(self) -> Any:
        """Long format: one row per (layer, head, kind) with the mean score."""
        import pandas as pd

        rows = [
            {"layer": layer, "head": head, "kind": kind, "score": float(self[kind][layer, head])}
            for kind in KINDS
            for layer in range(self.n_layers)
            for head in range(self.n_heads)
        ]
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
            per_example, query=meta["query"], n_sink=meta["n_sink"], meta=meta.get("meta", {})
        )

    def figure(self, kind: str = "relevant", **kwargs: Any) -> Any:
        """A layer x head heatmap of one score kind (a plotly ``go.Figure``)."""
        from focuslens import plots

        return plots.head_scores(self, kind=kind, **kwargs)

    def _repr_html_(self) -> str:
        """A notebook card: key numbers and the heatmap (:mod:`focuslens.plots.notebook`)."""
        from focuslens.plots import notebook

        return notebook.contextual_scores_html(self)

    def __repr__(self) -> str:
        top = ", ".join(f"L{l}H{h}" for l, h in self.top_heads(min(5, self.relevant.numel())))
        return (
            f"ContextualScores(n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"n_examples={self.n_examples}, query={self.query!r}, top=[{top}])"
        )


__all__ = [
    "KINDS",
    "ContextualScores",
]
