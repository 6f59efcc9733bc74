"""Prompt builders and loaders: the synthetic retrieval task of the demo model, and
multi-document QA for real models."""

from focuslens.tasks.loaders import load_helmet, load_lost_in_the_middle
from focuslens.tasks.qa import QAFormat, qa_prompt, qa_prompt_of_length
from focuslens.tasks.synthetic import synthetic_retrieval

__all__ = [
    "QAFormat",
    "load_helmet",
    "load_lost_in_the_middle",
    "qa_prompt",
    "qa_prompt_of_length",
    "synthetic_retrieval",
]
