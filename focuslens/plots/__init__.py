"""Interactive plotly figures and the HTML report. Figures draw results; they never run a model."""

from focuslens.plots.attention import SPAN_COLOURS, attention_figure, attention_map
from focuslens.plots.figures import accuracy_curves, allocation, head_effects, head_scores
from focuslens.plots.report import Report, Section

__all__ = [
    "accuracy_curves",
    "allocation",
    "head_effects",
    "head_scores",
    "SPAN_COLOURS",
    "attention_figure",
    "attention_map",
    "Report",
    "Section",
]
