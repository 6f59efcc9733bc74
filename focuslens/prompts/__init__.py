"""Labelled prompts and their exact mapping to tokens.

A :class:`LabeledPrompt` is the text a model reads plus the character spans of its relevant
document and its distractors; :func:`tokenize_prompt` maps them to token
positions exactly, through the tokenizer's offsets.
"""

from focuslens.prompts.batch import PromptBatch, query_rows, tokenized_prompts
from focuslens.prompts.spans import (
    DEFAULT_DOC_BODY,
    DEFAULT_DOC_PREFIX,
    DEFAULT_INSTRUCTION,
    LabeledPrompt,
    assemble,
)
from focuslens.prompts.tokens import TokenizedPrompt, char_to_token_span, tokenize_prompt

__all__ = [
    "PromptBatch",
    "query_rows",
    "tokenized_prompts",
    "DEFAULT_DOC_BODY",
    "DEFAULT_DOC_PREFIX",
    "DEFAULT_INSTRUCTION",
    "assemble",
    "char_to_token_span",
    "LabeledPrompt",
    "tokenize_prompt",
    "TokenizedPrompt",
]
