"""focuslens: which attention heads decide what a language model reads in a long context,
and can we make it read the right part?"""

from focuslens import models, plots, tasks
from focuslens.attention import AttentionMap, attention_map_data
from focuslens.attribution import HeadEffects, ablation_effects, attribution_patching
from focuslens.demo import load_demo_model
from focuslens.directions import FocusDirections
from focuslens.evaluate import EvalResult, evaluate
from focuslens.experiments import HeadExperiment, contextual_head_experiment
from focuslens.heads import HeadScores, HeadSet
from focuslens.interventions import HeadAblation, Pasta, SplitSoftmax
from focuslens.learn import learn_focus_directions
from focuslens.longctx import chunked_contextual_scores, chunked_forward
from focuslens.report import Report
from focuslens.retrieval import retrieval_scores
from focuslens.scores import ContextualScores, contextual_scores
from focuslens.spans import LabeledPrompt, TokenizedPrompt, tokenize_prompt

__version__ = "0.1.0"

__all__ = [
    "AttentionMap",
    "Report",
    "attention_map_data",
    "models",
    "plots",
    "tasks",
    "ContextualScores",
    "EvalResult",
    "FocusDirections",
    "HeadSet",
    "chunked_contextual_scores",
    "chunked_forward",
    "contextual_scores",
    "evaluate",
    "load_demo_model",
    "learn_focus_directions",
    "LabeledPrompt",
    "TokenizedPrompt",
    "__version__",
    "tokenize_prompt",
    "HeadAblation",
    "HeadEffects",
    "HeadExperiment",
    "HeadScores",
    "Pasta",
    "SplitSoftmax",
    "ablation_effects",
    "attribution_patching",
    "contextual_head_experiment",
    "retrieval_scores",
]
