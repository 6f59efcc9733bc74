"""The split-softmax experiment of the paper as one call, with its controls.

Question: is more attention to the relevant document what fixes distraction? The paper
(METHOD.md section 3) answers it by rescaling, in the top-k contextual heads only, the
attention mass on the relevant span to ``p ** tau``
(:class:`~focuslens.interventions.SplitSoftmax`) and comparing accuracy with:

* ``baseline``: the model as it is, on the same prompts;
* ``gold_only``: the same prompts with only the relevant document (no distractors);
* ``top_k``: split-softmax on the k heads with the highest contextual score;
* ``random_k``: split-softmax on k random heads (``n_random`` draws, disjoint from the
  top-k set when the model has enough heads, optionally in the same layers);
* ``many``: split-softmax on many heads at once (every head by default).

The paper's pattern (Llama-3.2-3B): top-k beats baseline and even gold-only at small
tau; random heads and many heads do not help. :func:`contextual_head_experiment`
measures all of it on any model and labelled prompts, and returns a tidy table: one
row per (condition, k, tau, seed) with accuracy and the attention allocation (mass of
the answer tokens on relevant / distractors / sink / other, averaged over the
``measure_heads``, by default the top ``max(ks)`` contextual heads, so that every
condition is measured on the same heads).

Head selection should use other prompts than the evaluation (``score_prompts=``);
without them the evaluation prompts are reused and ``meta["selection"]`` says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from focuslens.evaluation.accuracy import ATTENTION_KINDS, evaluate
from focuslens.heads import HeadSet, random_control, top_k
from focuslens.interventions.oracles import SplitSoftmax
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.result import ContextualScores
from focuslens.typing import Model

CONDITIONS = ("baseline", "gold_only", "top_k", "random_k", "many")
"""The conditions of :func:`contextual_head_experiment`, in order."""

COLUMNS = (
    "condition",
    "series",
    "k",
    "tau",
    "seed",
    "heads",
    "accuracy",
    "n",
    *(f"attn_{kind}" for kind in ATTENTION_KINDS),
)


@dataclass
class HeadExperiment:
    """Accuracy and attention allocation per condition of the split-softmax experiment.

    Attributes:
        frame: One row per run: ``condition`` (see :data:`CONDITIONS`), ``series`` (a
            legend label), ``k`` (heads intervened on; 0 for baseline and gold-only),
            ``tau`` (NaN for baseline and gold-only), ``seed`` (random draws; -1
            otherwise), ``heads`` (``"L1H2 L3H0"``), ``accuracy``, ``n`` and the mean
            ``attn_relevant``, ``attn_distractors``, ``attn_sink``, ``attn_other``.
        examples: The per-example rows of every run (``focuslens.evaluate``'s
            columns), with ``condition``, ``k``, ``tau`` and ``seed`` added.
        scores: The contextual scores the heads were chosen by.
        measure_heads: The heads whose attention allocation is reported.
        meta: Provenance (model, number of prompts, how heads were selected).
    """

    frame: pd.DataFrame
    examples: pd.DataFrame
    scores: ContextualScores
    measure_heads: HeadSet
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        """The tidy per-run table (a copy)."""
        return self.frame.copy()

    def reference(self, condition: str) -> tuple[float, int]:
        """``(accuracy, n)`` of ``"baseline"`` or ``"gold_only"``."""
        row = self.frame[self.frame.condition == condition]
        if row.empty:
            raise ValueError(
                f"no {condition!r} row; conditions here: {sorted(set(self.frame.condition))}"
            )
        return float(row.accuracy.iloc[0]), int(row.n.iloc[0])

    def compare(
        self, tau: float | None = None, confidence: float = 0.95, significance: float = 0.05
    ) -> pd.DataFrame:
        """Each top-k run against the baseline and against every random-k run of the same k,
        prompt by prompt (all runs answer the same prompts).

        Args:
            tau: The split-softmax tau (default: the smallest run).
            confidence: Level of the paired interval on the difference.

        Returns:
            One row per comparison: ``k``, ``tau``, ``versus`` (``"baseline"`` or
            ``"random_k seed S"``), ``accuracy`` (top-k), ``reference``, ``difference``
            with its paired interval ``low``/``high``
            (:func:`~focuslens.evaluation.curves.paired_difference_interval`), ``fixed``
            and ``broken`` (prompts right only under top-k, only under the reference), the
            exact McNemar ``p_value``, and the ``verdict``: ``"above"``, ``"below"`` or
            ``"within noise"`` (:func:`~focuslens.evaluation.curves.paired_verdict` at
            ``significance``).
        """
        from focuslens.evaluation.curves import paired_summary, paired_verdict

        ex = self.examples
        taus = sorted(ex.tau.dropna().unique())
        if not taus:
            raise ValueError("no split-softmax run in this experiment")
        tau = taus[0] if tau is None else tau
        if tau not in taus:
            raise ValueError(f"no run at tau={tau}; taus here: {taus}")
        at = ex[ex.tau == tau]
        base = ex[ex.condition == "baseline"]
        rows = []
        for k, top in at[at.condition == "top_k"].groupby("k", sort=True):
            randoms = at[(at.condition == "random_k") & (at.k == k)]
            refs = [("baseline", base)] + [
                (f"random_k seed {seed}", group) for seed, group in randoms.groupby("seed")
            ]
            for name, ref in refs:
                paired = paired_summary(top, ref, confidence)
                if paired is None:
                    raise ValueError(f"top_k k={k} and {name} did not answer the same prompts")
                rows.append(
                    {
                        "k": int(k),
                        "tau": float(tau),
                        "versus": name,
                        "accuracy": float(top.correct.mean()),
                        "reference": float(ref.correct.mean()),
                        **{
                            c: paired[c]
                            for c in ("difference", "low", "high", "fixed", "broken", "p_value")
                        },
                        "verdict": paired_verdict(paired, significance),
                    }
                )
        return pd.DataFrame(rows)

    def curves(self, tau: float | None = None) -> pd.DataFrame:
        """Accuracy against k per series (top-k, random pooled over seeds, many) at one tau."""
        taus = sorted(self.frame.tau.dropna().unique())
        if not taus:
            raise ValueError("no split-softmax run in this experiment")
        tau = taus[0] if tau is None else tau
        runs = self.frame[(self.frame.tau == tau) & self.frame.condition.isin(CONDITIONS[2:])]
        if runs.empty:
            raise ValueError(f"no run at tau={tau}; taus here: {taus}")
        runs = runs.assign(correct=runs.accuracy * runs.n)
        table = runs.groupby(["condition", "k"], sort=False)[["correct", "n"]].sum().reset_index()
        table["accuracy"] = table.correct / table.n
        names = {
            "top_k": "top-k contextual heads",
            "random_k": "k random heads",
            "many": "many heads",
        }
        table["series"] = table.condition.map(names)
        return table[["series", "condition", "k", "accuracy", "n"]]

    def figure(self, tau: float | None = None, title: str | None = None) -> Any:
        """Accuracy against the number of boosted heads at one tau, with the baseline and
        gold-only references (:func:`focuslens.plots.accuracy_curves`)."""
        from focuslens import plots

        table = self.curves(tau)
        tau = tau if tau is not None else sorted(self.frame.tau.dropna().unique())[0]
        return plots.accuracy_curves(
            table,
            x="k",
            baseline=self.reference("baseline"),
            gold_only=self.reference("gold_only"),
            title=title or f"Split-softmax (tau={tau}) on k heads",
        )

    def __repr__(self) -> str:
        base, gold = self.reference("baseline")[0], self.reference("gold_only")[0]
        return (
            f"HeadExperiment(runs={len(self.frame)}, n={self.meta.get('n_prompts')}, "
            f"baseline={base:.3f}, gold_only={gold:.3f})"
        )


def _check(
    prompts: Sequence[LabeledPrompt], ks: Sequence[int], taus: Sequence[float], n_heads: int
):
    if isinstance(prompts, LabeledPrompt) or len(prompts) == 0:
        raise ValueError("give a non-empty list of labelled prompts")
    absent = [i for i, p in enumerate(prompts) if p.relevant is None]
    if absent:
        raise ValueError(
            f"prompts {absent[:10]} have no relevant document; the experiment needs one in "
            "every prompt (gold-only variants, split-softmax)"
        )
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= n_heads for k in ks
    ):
        raise ValueError(
            f"ks must be ints between 1 and {n_heads} (the number of heads), got {ks!r}"
        )
    if not taus:
        raise ValueError("taus is empty; give at least one tau > 0")


def _row(condition: str, series: str, k: int, tau: float, seed: int, heads: Any, result: Any):
    summary = result.summary()
    row = {
        "condition": condition,
        "series": series,
        "k": k,
        "tau": tau,
        "seed": seed,
        "heads": "" if heads is None else str(HeadSet(heads)),
        "accuracy": result.accuracy,
        "n": result.n,
    }
    for kind in ATTENTION_KINDS:
        row[f"attn_{kind}"] = summary.get(f"attn_{kind}", float("nan"))
    return row


def contextual_head_experiment(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    ks: Sequence[int] = (1, 5, 10, 20),
    taus: Sequence[float] = (0.1,),
    scores: ContextualScores | None = None,
    score_prompts: Sequence[LabeledPrompt] | None = None,
    n_random: int = 3,
    seed: int = 0,
    many: int | None = None,
    match_layers: bool = False,
    measure_heads: Any = None,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> HeadExperiment:
    """Accuracy and attention allocation: baseline, gold-only, split-softmax on top-k /
    random / many heads, for every k in ``ks`` and tau in ``taus``.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Evaluation prompts, each with a relevant document and gold answers.
        ks: Numbers of heads to boost.
        taus: Split-softmax exponents (``tau < 1`` boosts the relevant span).
        scores: Contextual scores to choose heads by; default computed on
            ``score_prompts`` (which need a ``response``).
        score_prompts: Prompts for head selection; default ``prompts`` (recorded in
            ``meta["selection"]``).
        n_random: Random head sets per k (seeds ``seed`` .. ``seed + n_random - 1``).
        seed: The first seed of the random draws.
        many: The ``many`` condition boosts the top ``many`` heads; default every head;
            ``0`` leaves the condition out.
        match_layers: Random controls keep the top-k set's number of heads per layer.
        measure_heads: Heads whose attention allocation is reported; default the top
            ``max(ks)``.
        max_new_tokens: Passed to :func:`focuslens.evaluate` (default: the prompts' own).
        progress: Show progress bars.

    Returns:
        A :class:`HeadExperiment` (``.to_dataframe()``, ``.figure()``).

    Example (on the shipped demo model; use about 100 prompts per condition for
    figures you report):

        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(4, n_documents=8, seed=1)
        >>> train = focuslens.tasks.synthetic_retrieval(8, n_documents=8, seed=0)
        >>> exp = contextual_head_experiment(
        ...     model, prompts, ks=[1], taus=[0.5], score_prompts=train, n_random=1
        ... )
        >>> df = exp.to_dataframe()
        >>> sorted(df["condition"].unique())
        ['baseline', 'gold_only', 'many', 'random_k', 'top_k']
        >>> fig = exp.figure(tau=0.5)
    """
    n_total = model.cfg.n_layers * model.cfg.n_heads
    if not isinstance(prompts, LabeledPrompt):
        prompts = list(prompts)  # any iterable; it is read once per condition
    _check(prompts, ks, taus, n_total)
    for tau in taus:
        SplitSoftmax([(0, 0)], tau)  # validates tau before any generation
    selection = "given scores" if scores is not None else "score_prompts"
    if scores is None:
        if score_prompts is None:
            selection = "same prompts"
        scores = contextual_scores(model, score_prompts or prompts, progress=progress)
    if many is not None and (isinstance(many, bool) or not isinstance(many, int) or many < 0):
        raise ValueError(f"many must be None or an int >= 0, got {many!r}")
    many_heads = top_k(scores, n_total if many is None else many) if many != 0 else None
    measure = HeadSet(measure_heads) if measure_heads is not None else top_k(scores, max(ks))
    runs: list[tuple[dict[str, Any], Any]] = []

    def run(condition: str, series: str, k: int, tau: float, seed: int, heads: Any, items: Any):
        intervention = None if heads is None else SplitSoftmax(heads, tau)
        result = evaluate(
            model,
            items,
            intervention=intervention,
            heads=measure,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        runs.append((_row(condition, series, k, tau, seed, heads, result), result))

    nan = float("nan")
    run("baseline", "baseline", 0, nan, -1, None, prompts)
    run("gold_only", "gold only", 0, nan, -1, None, [p.gold_only() for p in prompts])
    for tau in taus:
        for k in ks:
            top = top_k(scores, k)
            run("top_k", f"top-k, tau={tau}", k, tau, -1, top, prompts)
            for draw in range(seed, seed + n_random):
                ctrl = random_control(top, model, seed=draw, match_layers=match_layers)
                run("random_k", f"random k, tau={tau}", k, tau, draw, ctrl, prompts)
        if many_heads is not None:
            run("many", f"many heads, tau={tau}", len(many_heads), tau, -1, many_heads, prompts)
    frame = pd.DataFrame([row for row, _ in runs], columns=list(COLUMNS))
    examples = pd.concat(
        [
            result.to_dataframe().assign(
                condition=row["condition"], k=row["k"], tau=row["tau"], seed=row["seed"]
            )
            for row, result in runs
        ],
        ignore_index=True,
    )
    meta = {
        "model": getattr(model.cfg, "model_name", None),
        "n_prompts": len(prompts),
        "selection": selection,
        "match_layers": match_layers,
        "n_random": n_random,
    }
    return HeadExperiment(frame, examples, scores, measure, meta)


__all__ = [
    "CONDITIONS",
    "contextual_head_experiment",
    "HeadExperiment",
]
