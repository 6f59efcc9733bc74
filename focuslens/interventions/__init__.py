"""Interventions on chosen heads, and their effects on the answer.

The :class:`Intervention` protocol, the oracles that need span labels (:class:`SplitSoftmax`,
:class:`Pasta`), :class:`HeadAblation`, and the effects of heads on the answer: ablation
(zero, mean, resample), attribution patching, and activation patching from a paired run
(:func:`patch_heads`).
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
from focuslens.interventions.patching import joint_patch_effect, patch_heads

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
    "joint_patch_effect",
    "patch_heads",
]
