"""Interventions on chosen heads, and their effects on the answer.

The :class:`Intervention` protocol, the oracles that need span labels (:class:`SplitSoftmax`,
:class:`Pasta`), :class:`HeadAblation`, and ablation / attribution effects per head.
"""

from focuslens.interventions.base import Intervention, applied
from focuslens.interventions.effects import (
    HeadEffects,
    ablation_effects,
    answer_logprob,
    answer_prompts,
    attribution_patching,
    joint_ablation_effect,
)
from focuslens.interventions.oracles import (
    HeadAblation,
    Pasta,
    SplitSoftmax,
    head_means,
    split_softmax,
)

__all__ = [
    "applied",
    "Intervention",
    "head_means",
    "HeadAblation",
    "Pasta",
    "split_softmax",
    "SplitSoftmax",
    "ablation_effects",
    "answer_logprob",
    "answer_prompts",
    "attribution_patching",
    "HeadEffects",
    "joint_ablation_effect",
]
