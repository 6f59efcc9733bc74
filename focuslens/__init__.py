"""focuslens: which attention heads decide what a language model reads in a long context,
and can we make it read the right part?"""

from focuslens.evaluate import EvalResult, evaluate
from focuslens.heads import HeadSet
from focuslens.scores import ContextualScores, contextual_scores
from focuslens.spans import LabeledPrompt, TokenizedPrompt, tokenize_prompt

__version__ = "0.1.0"

__all__ = [
    "ContextualScores",
    "EvalResult",
    "HeadSet",
    "contextual_scores",
    "evaluate",
    "LabeledPrompt",
    "TokenizedPrompt",
    "__version__",
    "tokenize_prompt",
]
