"""Answer metrics: is a generated answer correct?

Two metrics, both on SQuAD-normalised text (:func:`normalize_answer`: lower case, no
punctuation, no articles ``a``/``an``/``the``, single spaces):

* :func:`best_subspan_em` ("best subspan exact match", the "lost in the middle" and
  focus-direction metric): correct when any gold answer is a substring of the
  prediction. Use it for free-text answers of real models, which often wrap the
  answer in a sentence ("The capital is Paris.").
* :func:`exact_match`: correct when the whole prediction equals a gold answer. Use it
  for the synthetic task, whose answers are short codes that a longer prediction
  should not get credit for containing.

:data:`METRICS` maps names to these functions; ``evaluate`` looks a metric up there
when it is given by name (or by a prompt's ``meta["metric"]``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

Metric = Callable[[str, Sequence[str]], bool]
"""A metric: ``(prediction, gold_answers) -> correct``."""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse spaces.

    Example:
        >>> normalize_answer("  The Eiffel-Tower, in PARIS!  ")
        'eiffeltower in paris'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _gold(answers: Sequence[str] | str) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    answers = list(answers)
    if not answers:
        raise ValueError("no gold answers given: a metric needs at least one")
    bad = [a for a in answers if not isinstance(a, str)]
    if bad:
        raise ValueError(f"gold answers must be strings, got {bad[0]!r} in {answers!r}")
    return answers


def best_subspan_em(prediction: str, answers: Sequence[str] | str) -> bool:
    """Correct when any normalised gold answer is a substring of the normalised prediction.

    A gold answer that normalises to the empty string (``"The"``) only matches a
    prediction that does too, rather than every prediction.

    Example:
        >>> best_subspan_em("I think it is the Eiffel Tower.", ["Eiffel Tower", "Tour Eiffel"])
        True
        >>> best_subspan_em("Paris", ["France"])
        False
    """
    pred = normalize_answer(prediction)
    for answer in _gold(answers):
        gold = normalize_answer(answer)
        if (gold in pred) if gold else (pred == ""):
            return True
    return False


def exact_match(prediction: str, answers: Sequence[str] | str) -> bool:
    """Correct when the normalised prediction equals a normalised gold answer.

    Example:
        >>> exact_match(" the  Paris. ", ["paris"])
        True
        >>> exact_match("Paris, France", ["Paris"])
        False
    """
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(answer) for answer in _gold(answers))


METRICS: dict[str, Metric] = {
    "best_subspan_em": best_subspan_em,
    "exact_match": exact_match,
    "exact": exact_match,
}
"""Metrics by name (``"exact"`` is an alias of ``"exact_match"``)."""


def get_metric(metric: str | Metric) -> Metric:
    """A metric function from a name in :data:`METRICS` or a callable (returned as is)."""
    if callable(metric):
        return metric
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)} or pass a callable")


def metric_name(metric: str | Metric) -> str:
    """A readable name for a metric (its registry name or its function name)."""
    if isinstance(metric, str):
        return metric
    for name, fn in METRICS.items():
        if fn is metric:
            return name
    return getattr(metric, "__name__", type(metric).__name__)


__all__ = [
    "METRICS",
    "best_subspan_em",
    "exact_match",
    "get_metric",
    "Metric",
    "metric_name",
    "normalize_answer",
]
