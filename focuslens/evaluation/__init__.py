"""Evaluation: answers, accuracy with intervals, attention allocation, and experiments."""

from focuslens.evaluation.accuracy import (
    ATTENTION_KINDS,
    EvalResult,
    evaluate,
)
from focuslens.evaluation.curves import (
    ALLOCATION_KINDS,
    accuracy_table,
    allocation_table,
    wilson_interval,
)
from focuslens.evaluation.experiments import CONDITIONS, HeadExperiment, contextual_head_experiment
from focuslens.evaluation.metrics import (
    METRICS,
    Metric,
    best_subspan_em,
    exact_match,
    get_metric,
    metric_name,
    normalize_answer,
)

__all__ = [
    "METRICS",
    "best_subspan_em",
    "exact_match",
    "get_metric",
    "Metric",
    "metric_name",
    "normalize_answer",
    "ATTENTION_KINDS",
    "EvalResult",
    "evaluate",
    "ALLOCATION_KINDS",
    "accuracy_table",
    "allocation_table",
    "wilson_interval",
    "CONDITIONS",
    "contextual_head_experiment",
    "HeadExperiment",
]
