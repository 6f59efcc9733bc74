"""Contextual scores: how much attention each head gives to each labelled span.

:func:`contextual_scores` reduces attention inside hooks (one pass, or chunked through the KV
cache for long prompts) and returns a :class:`ContextualScores`; :func:`attention_map_data`
keeps the attention of a few heads over one prompt; :func:`retrieval_scores` is the
retrieval-head score of Wu et al. (2024), for comparison.
"""

from focuslens.scores.attention import AttentionMap, Segment, attention_map_data
from focuslens.scores.chunked import chunked_contextual_scores
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.result import ContextualScores
from focuslens.scores.retrieval import retrieval_scores

__all__ = [
    "ContextualScores",
    "contextual_scores",
    "chunked_contextual_scores",
    "attention_map_data",
    "AttentionMap",
    "Segment",
    "retrieval_scores",
]
