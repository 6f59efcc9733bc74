"""What the explorer shows: one prompt's answer and attention by document, for one setting.

:func:`focuslens.explore` (a notebook panel, :mod:`focuslens.app.explorer`) lets a
learner move ``alpha`` (focus-direction steering), ``tau`` (the split-softmax oracle) and
pick heads, and redraws. Everything it draws comes from :func:`explore_view`, a plain
function that composes the measuring functions of focuslens:

1. the intervention: :meth:`FocusDirections.steering <focuslens.FocusDirections.steering>`
   with ``alpha`` on the chosen heads (when ``alpha != 0``) and
   :class:`~focuslens.SplitSoftmax` with ``tau`` on the same heads (when ``tau != 1``),
   both at once when both are set (:class:`Combined`);
2. the greedy answer under it: :func:`focuslens.evaluate` on the one prompt (answer and
   correctness);
3. where the chosen heads look while reading that answer: the answer is appended to the
   prompt (re-tokenised from its text), and
   :func:`~focuslens.scores.attention.attention_map_data`, under the same intervention,
   keeps the attention of the answer rows; each row is summed by document
   (:meth:`AttentionMap.by_segment <focuslens.AttentionMap.by_segment>`) and averaged
   over the rows. Without an answer, the last prompt token's row is used.

Example:
    >>> import focuslens
    >>> model = focuslens.load_demo_model()
    >>> prompt = focuslens.tasks.synthetic_retrieval(1, n_documents=8, seed=0)[0]
    >>> view = explore_view(model, prompt, [(2, 2)], tau=0.1)
    >>> round(float(view.mass.sum(dim=1)[0]), 4)  # each head's rows sum to 1
    1.0
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from focuslens.evaluation.accuracy import evaluate
from focuslens.heads import HeadSet, str_head, unique_heads
from focuslens.interventions.base import Intervention, applied
from focuslens.interventions.oracles import SplitSoftmax
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.attention import attention_map_data
from focuslens.scores.contextual import contextual_scores
from focuslens.typing import Model


@dataclass(frozen=True)
class Combined:
    """Several interventions at once: each ``apply`` is entered in order (and left in
    reverse order, also when the body raises)."""

    parts: tuple[Any, ...]

    @contextlib.contextmanager
    def _apply(self, model: Model, prompts: Sequence[LabeledPrompt]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.apply(model, prompts))
            yield

    def apply(self, model: Model, prompts: Sequence[LabeledPrompt]) -> Any:
        """A context manager that applies every part."""
        return self._apply(model, prompts)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)


def explorer_intervention(
    heads: Sequence[tuple[int, int]],
    *,
    directions: Any = None,
    alpha: float | int = 0.0,
    tau: float | int = 1.0,
) -> Intervention | None:
    """Steering with ``alpha`` and split-softmax with ``tau`` on ``heads`` (None: neither).

    Raises:
        ValueError: ``alpha != 0`` without directions, or ``tau <= 0``.
    """
    for name, value in (("alpha", alpha), ("tau", tau)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0 (1 leaves attention as it is), got {tau}")
    if alpha != 0 and directions is None:
        raise ValueError(
            f"alpha={alpha} steers with focus directions, but none were given; pass "
            "directions= (e.g. focuslens.learn_focus_directions(...) or "
            "FocusDirections.pretrained(...)) or leave alpha at 0"
        )
    parts: list[Any] = []
    if alpha != 0:
        parts.append(directions.steering(list(heads), float(alpha)))
    if tau != 1:
        parts.append(SplitSoftmax(list(heads), float(tau)))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Combined(tuple(parts))


@dataclass
class ExplorerView:
    """One setting of the explorer: the answer and where the chosen heads looked.

    Attributes:
        heads: The heads intervened on and shown.
        alpha: Steering strength (0: no steering).
        tau: Split-softmax exponent (1: no split-softmax).
        answer: The greedy answer under the intervention.
        correct: Whether it is right (by the prompt's metric).
        answers: The gold answers.
        segments: Names of the key segments (``"sink"``, ``"doc 1"``,
            ``"doc 3 (relevant)"``, ..., ``"other"``, ``"response"``).
        kinds: The kind of each segment (``"sink"``, ``"relevant"``, ``"distractor"``,
            ``"other"``, ``"response"``).
        mass: ``[n_chosen, n_segments]`` attention of each head's answer rows on each
            segment, averaged over the rows (each head's row sums to 1).
        rows: ``"response"`` (the answer's rows) or ``"last"`` (no answer: the last
            prompt token's row).
        meta: Provenance (the intervention, the model name).
    """

    heads: list[tuple[int, int]]
    alpha: float
    tau: float
    answer: str
    correct: bool
    answers: list[str]
    segments: list[str]
    kinds: list[str]
    mass: Float[Tensor, "n_chosen n_segments"]
    rows: str = "response"
    meta: dict[str, Any] = field(default_factory=dict)

    def mean_mass(self) -> Float[Tensor, " n_segments"]:
        """The mass on each segment, averaged over the chosen heads."""
        return self.mass.mean(dim=0)

    def by_kind(self) -> dict[str, float]:
        """Mean mass (over heads) on each kind: relevant, distractor, sink, other, response."""
        mean = self.mean_mass()
        out = {kind: 0.0 for kind in ("relevant", "distractor", "sink", "other", "response")}
        for kind, value in zip(self.kinds, mean.tolist()):
            out[kind] += value
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: head, segment, kind, mass."""
        return pd.DataFrame(
            [
                {"head": str_head(h), "segment": s, "kind": k, "mass": float(self.mass[i, j])}
                for i, h in enumerate(self.heads)
                for j, (s, k) in enumerate(zip(self.segments, self.kinds))
            ]
        )

    def figure(self) -> Any:
        """Bars: attention by document, mean over the chosen heads, coloured by kind."""
        from focuslens.plots import notebook

        return notebook.explorer_figure(self)

    def _repr_html_(self) -> str:
        from focuslens.plots import notebook

        return notebook.explorer_view_html(self)

    def __repr__(self) -> str:
        kinds = self.by_kind()
        return (
            f"ExplorerView(heads=[{', '.join(str_head(h) for h in self.heads)}], "
            f"alpha={self.alpha:g}, tau={self.tau:g}, answer={self.answer!r}, "
            f"correct={self.correct}, relevant={kinds['relevant']:.3f}, "
            f"distractors={kinds['distractor']:.3f})"
        )


def default_heads(
    model: Model, prompt: LabeledPrompt, directions: Any = None, k: int = 3
) -> list[tuple[int, int]]:
    """The heads the explorer starts with: the directions' top ``k`` ranked heads, else
    the prompt's top ``k`` contextual heads."""
    if directions is not None and directions.heads:
        return list(directions.heads[:k])
    if prompt.relevant is None:
        raise ValueError("the prompt has no relevant document; pass heads= explicitly")
    query = "response" if prompt.response else "last"
    return contextual_scores(model, [prompt], query=query).top_heads(k)


def explore_view(
    model: Model,
    prompt: LabeledPrompt,
    heads: HeadSet | Sequence[Any] | None = None,
    *,
    directions: Any = None,
    alpha: float | int = 0.0,
    tau: float | int = 1.0,
    max_new_tokens: int | None = None,
    sink: int = 2,
) -> ExplorerView:
    """The greedy answer and the attention by document of ``heads`` for one setting.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompt: A labelled prompt (its ``response``, if any, is ignored).
        heads: The heads to intervene on and show (default: :func:`default_heads`).
        directions: :class:`~focuslens.FocusDirections` for ``alpha``.
        alpha: Steering strength on ``heads`` (0: none).
        tau: Split-softmax exponent on ``heads`` (1: none; < 1 focuses on the relevant
            document).
        max_new_tokens: Length of the answer (default: the prompt's, else 100).
        sink: Leading positions counted as the sink.

    Returns:
        An :class:`ExplorerView`.
    """
    if not isinstance(prompt, LabeledPrompt):
        raise TypeError(f"prompt must be a LabeledPrompt, got {type(prompt).__name__}")
    if heads is None:
        heads = default_heads(model, prompt, directions)
    heads = list(heads)
    if not heads:
        raise ValueError("pick at least one head")
    chosen = unique_heads(model, heads)
    if directions is not None:
        directions.check_model(model)
    intervention = explorer_intervention(chosen, directions=directions, alpha=alpha, tau=tau)
    result = evaluate(
        model, [prompt], intervention=intervention, max_new_tokens=max_new_tokens, progress=False
    )
    row = result.frame.iloc[0]
    answer = str(row["prediction"])
    measured = prompt.with_response(answer if answer.strip() else None)
    rows = "response" if answer.strip() else "last"
    with applied(intervention, model, [measured]):
        amap = attention_map_data(model, measured, chosen, query=rows, sink=sink)
    segments, values = amap.by_segment()
    return ExplorerView(
        heads=chosen,
        alpha=float(alpha),
        tau=float(tau),
        answer=answer,
        correct=bool(row["correct"]),
        answers=list(prompt.answers),
        segments=[s.name for s in segments],
        kinds=[s.kind for s in segments],
        mass=values.mean(dim=1),
        rows=rows,
        meta={
            "intervention": repr(intervention),
            "model": getattr(model.cfg, "model_name", None),
        },
    )


__all__ = [
    "Combined",
    "ExplorerView",
    "default_heads",
    "explore_view",
    "explorer_intervention",
]
