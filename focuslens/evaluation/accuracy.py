"""Answer evaluation: generate, score the answers, and measure where the heads looked.

One call, :func:`evaluate`, gives accuracy and attention allocation for any
intervention, so that "accuracy" means the same thing everywhere in focuslens:

1. each prompt is tokenised with :func:`focuslens.tokenize_prompt` (its ``response``,
   if any, is ignored) and answered greedily inside ``intervention.apply(model,
   prompts_of_the_batch)``, ``batch_size`` prompts at a time
   (:func:`~focuslens.model.batched.generate_greedy_batch`: right padding behind each
   prompt, so every token keeps its position; the same answers as one at a time);
2. the answer is scored by the metric (the ``metric`` argument, else the prompt's
   ``meta["metric"]``, else :func:`best_subspan_em`);
3. with ``heads``, the answer is appended to the prompt (teacher forcing) and
   :func:`focuslens.contextual_scores` measures, under the same intervention, the
   attention mass of the answer's tokens on the relevant document, the distractors,
   the sink and the rest, averaged over the chosen heads.

Interventions (split-softmax, PASTA, focus-direction steering) are any object with an
``apply(model, prompts)`` method that returns a context manager: see
:class:`Intervention`. Oracle interventions read the labelled spans of the prompts they
are given; since batched generation pads only after each prompt, those spans keep
their token positions in every forward pass.

Tasks can carry their own defaults in ``prompt.meta``: ``"metric"`` (a name in
:data:`METRICS` or a callable), ``"max_new_tokens"`` and ``"stop_strings"``; explicit
arguments to :func:`evaluate` override them.

Note: ``focuslens.evaluate`` is the function; import names from this module with
``from focuslens.evaluate import EvalResult``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from focuslens.evaluation.metrics import (
    Metric,
    best_subspan_em,
    get_metric,
    metric_name,
)
from focuslens.heads import HeadSet
from focuslens.interventions.base import Intervention, applied
from focuslens.model.batched import generate_greedy_batch, generates_batched
from focuslens.model.generation import Generation, answer_tokens
from focuslens.model.responses import answer_settings
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt, tokenize_prompt
from focuslens.scores.contextual import contextual_scores
from focuslens.typing import Model

ATTENTION_KINDS = ("relevant", "distractors", "sink", "other")
"""The attention-allocation columns of :meth:`EvalResult.to_dataframe` (``attn_<kind>``)."""

_CORE = (
    "example",
    "prediction",
    "correct",
    "answers",
    "gold_position",
    "n_documents",
    "n_prompt_tokens",
    "n_new_tokens",
    "stop_reason",
    "metric",
    "note",
)


@dataclass
class EvalResult:
    """Answers, correctness and attention allocation, one row per example.

    Attributes:
        frame: The per-example table (see :meth:`to_dataframe`).
        heads: The ``(layer, head)`` pairs whose attention was measured, or None.
        meta: Provenance (metric, max_new_tokens, intervention type, ...).
    """

    frame: pd.DataFrame
    heads: list[tuple[int, int]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in ("prediction", "correct") if c not in self.frame.columns]
        if missing:
            raise ValueError(f"EvalResult.frame lacks the columns {missing}")

    @property
    def accuracy(self) -> float:
        """Fraction of correct answers (NaN when there are no examples)."""
        return float(self.frame["correct"].mean()) if len(self.frame) else float("nan")

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self.frame)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per example (a copy).

        Columns: ``example`` (index in the prompts), ``prediction``, ``correct``,
        ``answers``, ``gold_position`` (0-based, None without a relevant document),
        ``n_documents``, ``n_prompt_tokens``, ``n_new_tokens``, ``stop_reason``,
        ``metric``, ``note`` (why an example has no attention row, else empty); with
        ``heads``, ``attn_relevant``, ``attn_distractors``, ``attn_sink``,
        ``attn_other`` (mean over the heads of the answer tokens' attention mass; NaN
        where not measured, ``attn_relevant`` NaN without a relevant document); then
        the scalar fields of each prompt's ``meta`` (one named like a column above
        appears as ``meta_<key>``, and only where it differs from the column).
        """
        return self.frame.copy()

    def _grouped(self, by: str) -> pd.DataFrame:
        cols = ["correct"] + [c for c in self.frame.columns if c.startswith("attn_")]
        grouped = self.frame.groupby(by, dropna=False)[cols]
        out = grouped.mean().rename(columns={"correct": "accuracy"})
        out.insert(1, "n", grouped.size())
        return out.reset_index()

    def summary(self) -> dict[str, Any]:
        """Accuracy overall and by gold position and number of documents.

        Returns:
            ``{"accuracy", "n", "by_gold_position", "by_n_documents"}`` plus, with
            heads, the mean ``attn_<kind>`` over measured examples. The ``by_*``
            entries are DataFrames with ``accuracy``, ``n`` and the mean ``attn_*``
            columns per group.
        """
        out: dict[str, Any] = {"accuracy": self.accuracy, "n": self.n}
        for col in self.frame.columns:
            if col.startswith("attn_"):
                out[col] = float(self.frame[col].mean())
        out["by_gold_position"] = self._grouped("gold_position")
        out["by_n_documents"] = self._grouped("n_documents")
        return out

    def compare(self, other: EvalResult, confidence: float = 0.95) -> dict[str, Any]:
        """This result against ``other`` on the same examples, example by example.

        A paired design: both must hold the same examples (the same ``example`` ids with
        the same gold ``answers``), e.g. two interventions evaluated on one prompt list.

        Args:
            other: The reference (usually the baseline).
            confidence: Level of the interval on the difference.

        Returns:
            ``{"n", "accuracy", "other_accuracy", "difference", "low", "high", "fixed",
            "broken", "p_value"}``: the accuracies, their difference (this minus
            ``other``) with its paired interval
            (:func:`~focuslens.evaluation.curves.paired_difference_interval`), the
            examples right only here (``fixed``) and only in ``other`` (``broken``), and
            the exact McNemar p-value (:func:`~focuslens.evaluation.curves.mcnemar_exact`).

        Raises:
            ValueError: When the two do not hold the same examples.
        """
        from focuslens.evaluation.curves import paired_summary

        mine, theirs = self.frame, other.frame
        paired = paired_summary(mine, theirs, confidence)
        if paired is None:
            raise ValueError(
                f"compare needs the same examples on both sides (one example id each): "
                f"this result has {self.n} examples, the other {other.n}; evaluate both on "
                "the same prompts"
            )
        if "answers" in mine.columns and "answers" in theirs.columns:
            a = mine.set_index("example")["answers"].map(str)
            b = theirs.set_index("example")["answers"].map(str).reindex(a.index)
            differ = a.index[a != b].tolist()
            if differ:
                raise ValueError(
                    f"compare needs the same examples on both sides, but the gold answers "
                    f"of examples {differ[:5]} differ: these are other prompts"
                )
        return {
            "n": paired["n"],
            "accuracy": self.accuracy,
            "other_accuracy": other.accuracy,
            **{k: paired[k] for k in ("difference", "low", "high", "fixed", "broken", "p_value")},
        }

    def _repr_html_(self) -> str:
        """A notebook card: accuracy with its interval, attention, first answers
        (:mod:`focuslens.plots.notebook`)."""
        from focuslens.plots import notebook

        return notebook.eval_result_html(self)

    def __repr__(self) -> str:
        heads = "" if self.heads is None else f", heads={len(self.heads)}"
        return f"EvalResult(n={self.n}, accuracy={self.accuracy:.3f}{heads})"


def _check_heads(model: Model, heads: Iterable[Any]) -> list[tuple[int, int]]:
    """Distinct ``(layer, head)`` pairs, sorted, checked against the model."""
    return list(HeadSet(heads).validate(model))


def _allocation(
    model: Model,
    tp: TokenizedPrompt,
    gen: Generation,
    heads: list[tuple[int, int]],
    intervention: Intervention | None,
    sink: int,
) -> tuple[dict[str, float], str]:
    """Mean attention of the answer tokens over ``heads``, and a note when not measured.

    The rows are the generated answer tokens themselves (:func:`answer_tokens`), fed
    back after the prompt's tokens: no re-tokenisation of the decoded text."""
    prompt = tp.source
    answer = answer_tokens(gen, model.tokenizer)
    if not gen.text.strip() or answer.numel() == 0:
        return {}, "empty prediction: no answer tokens to measure attention from"
    teacher = prompt.with_response(gen.text)
    exact = replace(
        tp, tokens=torch.cat([tp.tokens[: tp.n_prompt], answer.to(tp.tokens)]), source=teacher
    )
    with applied(intervention, model, [teacher]):
        scores = contextual_scores(
            model, [exact], query="response", sink=sink, batch_size=1, require_relevant=False
        )
    layers = torch.tensor([layer for layer, _ in heads])
    idx = torch.tensor([head for _, head in heads])
    values = {
        kind: float(scores.per_example[kind][0, layers, idx].float().mean())
        for kind in ATTENTION_KINDS
    }
    note = "" if prompt.relevant is not None else "no relevant document: attn_relevant is NaN"
    return values, note


def _meta_columns(meta: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Scalar meta fields; one named like a column is kept (as ``meta_<key>``) only when
    it differs from that column (e.g. a ``gold_position`` copied into a variant)."""
    out = {}
    for key, value in meta.items():
        if not (isinstance(value, (str, int, float, bool)) or value is None):
            continue
        if key in row or key in _CORE or str(key).startswith("attn_"):
            if row.get(key) != value:
                out[f"meta_{key}"] = value
        else:
            out[str(key)] = value
    return out


@dataclass(frozen=True)
class _Options:
    """The arguments of :func:`evaluate` that each example needs."""

    intervention: Intervention | None
    metric: str | Metric | None
    max_new_tokens: int | None
    stop_strings: str | Sequence[str] | None
    stop_ids: int | Iterable[int] | None
    heads: list[tuple[int, int]] | None
    sink: int

    def for_prompt(self, prompt: LabeledPrompt) -> tuple[str | Metric, int, Any]:
        """Metric, max_new_tokens and stop strings: arguments, else meta, else defaults."""
        meta = prompt.meta
        metric = self.metric if self.metric is not None else meta.get("metric", best_subspan_em)
        return (metric, *answer_settings(prompt, self.max_new_tokens, self.stop_strings))


def _row(
    model: Model,
    index: int,
    prompt: LabeledPrompt,
    tp: TokenizedPrompt,
    gen: Generation,
    options: _Options,
) -> dict[str, Any]:
    metric = options.for_prompt(prompt)[0]
    row = {
        "example": index,
        "prediction": gen.text,
        "correct": bool(get_metric(metric)(gen.text, prompt.answers)),
        "answers": list(prompt.answers),
        "gold_position": prompt.gold_position,
        "n_documents": prompt.n_documents,
        "n_prompt_tokens": tp.n_prompt,
        "n_new_tokens": int(gen.tokens.numel()),
        "stop_reason": gen.stop_reason,
        "metric": metric_name(metric),
        "note": "",
    }
    if options.heads is not None:
        values, row["note"] = _allocation(
            model, tp, gen, options.heads, options.intervention, options.sink
        )
        for kind in ATTENTION_KINDS:
            row[f"attn_{kind}"] = values.get(kind, float("nan"))
    row.update(_meta_columns(prompt.meta, row))
    return row


def _batches(prompts: list[LabeledPrompt], options: _Options, size: int) -> list[list[int]]:
    """Prompt indices in batches of at most ``size`` that share max_new_tokens and stop
    strings (so one batched generation serves them all), in order of first index."""
    groups: dict[Any, list[int]] = {}
    for i, prompt in enumerate(prompts):
        _, max_new, stops = options.for_prompt(prompt)
        key = (max_new, tuple(stops) if isinstance(stops, (list, tuple)) else stops)
        groups.setdefault(key, []).append(i)
    out = [g[s : s + size] for g in groups.values() for s in range(0, len(g), size)]
    return sorted(out, key=lambda b: b[0])


def _generate(
    model: Model,
    batch: list[int],
    prompts: list[LabeledPrompt],
    tps: list[TokenizedPrompt],
    options: _Options,
) -> list[Generation]:
    """Greedy answers of the prompts ``batch``, generated together under the intervention."""
    _, max_new, stops = options.for_prompt(prompts[batch[0]])
    with applied(options.intervention, model, [prompts[i] for i in batch]):
        return generate_greedy_batch(
            model,
            [tps[i].tokens[: tps[i].n_prompt] for i in batch],
            max_new_tokens=max_new,
            stop_ids=options.stop_ids,
            stop_strings=stops,
        )


def evaluate(
    model: Model,
    prompts: Iterable[LabeledPrompt] | LabeledPrompt,
    *,
    intervention: Intervention | None = None,
    metric: str | Metric | None = None,
    max_new_tokens: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    stop_ids: int | Iterable[int] | None = None,
    heads: HeadSet | Iterable[Any] | None = None,
    sink: int = 2,
    progress: bool = True,
    batch_size: int = 8,
) -> EvalResult:
    """Answer each prompt greedily, score the answers, and optionally measure attention.

    Args:
        model: A ``HookedTransformer`` (or ``TransformerBridge``) with a tokenizer.
        prompts: Labelled prompts; their ``answers`` are the gold answers and their
            ``response`` is ignored.
        intervention: An :class:`Intervention`; ``intervention.apply(model, prompts)``
            is entered around each batch's generation (with the batch's prompts) and
            each prompt's attention pass (with that prompt).
        metric: A name in :data:`METRICS` or a callable ``(prediction, answers) ->
            bool``; default: each prompt's ``meta["metric"]``, else best subspan EM.
        max_new_tokens: Default: ``meta["max_new_tokens"]``, else 100.
        stop_strings: Default: ``meta["stop_strings"]``, else none (EOS and
            ``max_new_tokens`` end an answer, as in the authors' code); ``"\\n"`` suits
            base models.
        stop_ids: Token ids that end an answer; default the tokenizer's EOS.
        heads: ``(layer, head)`` pairs or a :class:`~focuslens.heads.HeadSet`: also
            measure the answer tokens' attention mass on the relevant document,
            distractors, sink and the rest, averaged over these heads (``attn_*``).
            The rows are the generated answer tokens themselves, fed back after the
            prompt under the same intervention (the stopping token left out).
        sink: Leading positions counted as the attention sink.
        progress: Show a progress bar over the prompts.
        batch_size: Prompts answered together (one batched greedy generation,
            :func:`~focuslens.model.batched.generate_greedy_batch`, among prompts that share
            ``max_new_tokens`` and stop strings). The answers and rows are those of one
            prompt at a time (``batch_size=1``); the intervention is applied to each batch's
            prompts, in order. A model without batched generation (a ``TransformerBridge``:
            :func:`~focuslens.model.batched.generates_batched`) answers one at a time.

    Returns:
        An :class:`EvalResult` (``.accuracy``, ``.to_dataframe()``, ``.summary()``).

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(4, n_documents=8, seed=0)
        >>> result = focuslens.evaluate(model, prompts, heads=[(1, 0), (1, 2)], progress=False)
        >>> result.n, 0.0 <= result.accuracy <= 1.0
        (4, True)
        >>> sorted(c for c in result.to_dataframe().columns if c.startswith("attn_"))
        ['attn_distractors', 'attn_other', 'attn_relevant', 'attn_sink']
    """
    if isinstance(prompts, LabeledPrompt):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError(
            "no prompts given; evaluate needs at least one (an empty run has no accuracy)"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, LabeledPrompt):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, expected a LabeledPrompt")
    if intervention is not None and not callable(getattr(intervention, "apply", None)):
        raise TypeError(
            f"intervention {type(intervention).__name__} has no apply(model, prompts) method"
        )
    if metric is not None:
        get_metric(metric)  # fail before generating anything
    pairs = _check_heads(model, heads) if heads is not None else None
    options = _Options(intervention, metric, max_new_tokens, stop_strings, stop_ids, pairs, sink)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    tps = []
    for i, prompt in enumerate(prompts):
        try:
            tps.append(tokenize_prompt(model, prompt))
        except ValueError as exc:
            raise ValueError(f"prompt {i}: {exc}") from None
    rows: list[dict[str, Any]] = [{} for _ in prompts]
    bar = tqdm(total=len(prompts), desc="evaluate", unit="prompt", disable=not progress)
    if not generates_batched(model):  # the intervention must see each forward's prompts
        batch_size = 1
    for batch in _batches(prompts, options, batch_size):
        try:
            gens = _generate(model, batch, prompts, tps, options)
        except ValueError as exc:
            where = f"prompt {batch[0]}" if len(batch) == 1 else f"prompts {batch}"
            raise ValueError(f"{where}: {exc}") from None
        for i, gen in zip(batch, gens):
            try:
                rows[i] = _row(model, i, prompts[i], tps[i], gen, options)
            except ValueError as exc:
                raise ValueError(f"prompt {i}: {exc}") from None
        bar.update(len(batch))
    bar.close()
    frame = pd.DataFrame(rows, columns=None if rows else list(_CORE))
    meta = {
        "metric": None if metric is None else metric_name(metric),
        "max_new_tokens": max_new_tokens,
        "intervention": None if intervention is None else type(intervention).__name__,
        "model": getattr(model.cfg, "model_name", None),
    }
    return EvalResult(frame=frame, heads=pairs, meta=meta)


__all__ = [
    "ATTENTION_KINDS",
    "EvalResult",
    "evaluate",
]
