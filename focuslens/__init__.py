"""focuslens: which attention heads decide what a language model reads in a long context,
and can we make it read the right part?

The package is layered, and imports go one way (``tests/test_layers.py`` checks it):

    typing -> prompts -> tasks -> model -> heads -> scores -> interventions -> directions
           -> evaluation -> plots -> app

The names below are the public surface; they load on first use, so ``import focuslens``
stays light (no plotly, no pandas).
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports name the lazily loaded public API)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    # prompts
    "LabeledPrompt": "focuslens.prompts",
    "TokenizedPrompt": "focuslens.prompts",
    "tokenize_prompt": "focuslens.prompts",
    # model
    "load_demo_model": "focuslens.demo",
    "load_model": "focuslens.model",
    "check_backend": "focuslens.model",
    "chunked_forward": "focuslens.model",
    # heads
    "HeadSet": "focuslens.heads",
    "HeadScores": "focuslens.heads",
    # scores
    "ContextualScores": "focuslens.scores",
    "contextual_scores": "focuslens.scores",
    "chunked_contextual_scores": "focuslens.scores",
    "AttentionMap": "focuslens.scores",
    "attention_map_data": "focuslens.scores",
    "retrieval_scores": "focuslens.scores",
    # interventions
    "Intervention": "focuslens.interventions",
    "SplitSoftmax": "focuslens.interventions",
    "Pasta": "focuslens.interventions",
    "HeadAblation": "focuslens.interventions",
    "HeadEffects": "focuslens.interventions",
    "ablation_effects": "focuslens.interventions",
    "attribution_patching": "focuslens.interventions",
    "patch_heads": "focuslens.interventions",
    # directions
    "FocusDirections": "focuslens.directions",
    "learn_focus_directions": "focuslens.directions",
    "steer": "focuslens.directions",
    "pretrained_heads": "focuslens.directions",
    # evaluation
    "EvalResult": "focuslens.evaluation",
    "evaluate": "focuslens.evaluation",
    "HeadExperiment": "focuslens.evaluation",
    "contextual_head_experiment": "focuslens.evaluation",
    # plots
    "Report": "focuslens.plots",
    # app
    "explore": "focuslens.app.explorer",
}
_SUBPACKAGES = (
    "prompts",
    "tasks",
    "model",
    "heads",
    "scores",
    "interventions",
    "directions",
    "evaluation",
    "plots",
    "app",
    "demo",
)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from focuslens.app.explorer import explore
    from focuslens.demo import load_demo_model
    from focuslens.directions.core import FocusDirections
    from focuslens.directions.learn import learn_focus_directions
    from focuslens.directions.pretrained import pretrained_heads
    from focuslens.directions.steering import steer
    from focuslens.evaluation.accuracy import EvalResult, evaluate
    from focuslens.evaluation.experiments import HeadExperiment, contextual_head_experiment
    from focuslens.heads import HeadScores, HeadSet
    from focuslens.interventions.base import Intervention
    from focuslens.interventions.effects import HeadEffects, ablation_effects, attribution_patching
    from focuslens.interventions.oracles import HeadAblation, Pasta, SplitSoftmax
    from focuslens.interventions.patching import patch_heads
    from focuslens.model.loading import check_backend, load_model
    from focuslens.model.prefill import chunked_forward
    from focuslens.plots.report import Report
    from focuslens.prompts.spans import LabeledPrompt
    from focuslens.prompts.tokens import TokenizedPrompt, tokenize_prompt
    from focuslens.scores.attention import AttentionMap, attention_map_data
    from focuslens.scores.chunked import chunked_contextual_scores
    from focuslens.scores.contextual import contextual_scores
    from focuslens.scores.result import ContextualScores
    from focuslens.scores.retrieval import retrieval_scores


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"focuslens.{name}")
    else:
        raise AttributeError(f"module 'focuslens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC, *_SUBPACKAGES])


__all__ = ["__version__", *_PUBLIC]
