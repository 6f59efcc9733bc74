"""An explorer for teaching: move alpha or tau, pick heads, watch attention and the answer.

:func:`explore` shows an ipywidgets panel in a notebook: a slider for ``alpha`` (focus
direction steering, when directions are given), a slider for ``tau`` (the split-softmax
oracle), and a head picker. Each change redraws the chosen heads' attention by document
and the model's greedy answer. The panel is a thin layer: every number comes from
:func:`focuslens.evaluation.explore.explore_view`, a plain tested function, which also
works without a notebook.

Values can be set from code too, as a lesson script would (``panel.alpha.value = 4``,
``panel.set(tau=0.1)``): the view is recomputed at once and kept in ``panel.view``.

Needs ``ipywidgets`` (in the ``dev`` extra; ``pip install ipywidgets``).
"""

from __future__ import annotations

from typing import Any

from focuslens.evaluation.explore import ExplorerView, default_heads, explore_view
from focuslens.heads import str_head
from focuslens.prompts.spans import LabeledPrompt
from focuslens.typing import Model

ALPHA_RANGE = (-8.0, 16.0, 0.5)
"""The alpha slider: minimum, maximum, step."""

TAU_RANGE = (0.05, 3.0, 0.05)
"""The tau slider: minimum, maximum, step (1 leaves attention as it is)."""


def _widgets() -> Any:
    try:
        import ipywidgets
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "focuslens.explore needs ipywidgets (pip install ipywidgets)"
        ) from None
    return ipywidgets


class Explorer:
    """The panel of :func:`explore` (displayed when it ends a cell).

    Attributes:
        alpha: The alpha slider (disabled without directions).
        tau: The tau slider.
        heads: The head picker (a multiple selection of ``"L<layer>H<head>"``).
        view: The :class:`~focuslens.evaluation.explore.ExplorerView` drawn now.
        panel: The ipywidgets box holding all of them.
        history: Every view computed, in order.
    """

    def __init__(
        self,
        model: Model,
        prompt: LabeledPrompt,
        directions: Any = None,
        *,
        heads: Any = None,
        max_new_tokens: int | None = None,
    ) -> None:
        widgets = _widgets()
        self.model, self.prompt, self.directions = model, prompt, directions
        self.max_new_tokens = max_new_tokens
        start = list(heads) if heads is not None else default_heads(model, prompt, directions)
        if directions is not None:
            directions.check_model(model)
            order = list(directions.heads) or []
        else:
            order = []
        every = [
            (layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
        ]
        order = list(dict.fromkeys([*start, *order, *every]))  # chosen and ranked heads first
        lo, hi, step = ALPHA_RANGE
        self.alpha = widgets.FloatSlider(
            value=0.0, min=lo, max=hi, step=step, description="alpha",
            disabled=directions is None, continuous_update=False,
        )  # fmt: skip
        lo, hi, step = TAU_RANGE
        self.tau = widgets.FloatSlider(
            value=1.0, min=lo, max=hi, step=step, description="tau", continuous_update=False
        )
        self.heads = widgets.SelectMultiple(
            options=[(str_head(h), h) for h in order],
            value=[tuple(h) for h in start],
            description="heads",
            rows=6,
        )
        self.status = widgets.HTML()
        self.output = widgets.Output()
        note = "" if directions is not None else " (alpha needs focus directions: directions=)"
        self.panel = widgets.VBox(
            [
                widgets.HTML(
                    "<b>focuslens explorer</b>: steer with alpha, focus with tau "
                    f"(1: off), on the chosen heads{note}"
                ),
                widgets.HBox([widgets.VBox([self.alpha, self.tau]), self.heads]),
                self.status,
                self.output,
            ]
        )
        self.history: list[ExplorerView] = []
        self.view = self.update()
        for widget in (self.alpha, self.tau, self.heads):
            widget.observe(self._changed, names="value")

    def compute(self) -> ExplorerView:
        """The view of the current widget values (no drawing)."""
        heads = list(self.heads.value)
        if not heads:
            raise ValueError("pick at least one head")
        return explore_view(
            self.model,
            self.prompt,
            heads,
            directions=self.directions,
            alpha=float(self.alpha.value),
            tau=float(self.tau.value),
            max_new_tokens=self.max_new_tokens,
        )

    def update(self) -> ExplorerView | None:
        """Recompute and redraw; a bad setting is shown in the panel, not raised."""
        from IPython import get_ipython
        from IPython.display import HTML, display

        try:
            view = self.compute()
        except ValueError as exc:
            self.status.value = f"<span style='color:#b00'>{exc}</span>"
            return None
        self.status.value = ""
        self.view = view
        self.history.append(view)
        if get_ipython() is not None:  # drawn in a notebook; outside one, only computed
            from focuslens.plots.notebook import plotlyjs_once

            script = plotlyjs_once()  # in the cell's output, not inside the Output widget
            if script:
                display(HTML(script))
            self.output.clear_output(wait=True)
            with self.output:
                display(HTML(view._repr_html_()))
        return view

    def set(
        self, *, alpha: float | int | None = None, tau: float | int | None = None, heads: Any = None
    ) -> ExplorerView | None:
        """Set several values at once (one redraw); returns the new view.

        Raises:
            ValueError: For a value outside its slider's range (a slider would clip it).
        """
        for name, value in (("alpha", alpha), ("tau", tau)):
            slider = getattr(self, name)
            if value is not None and not slider.min <= value <= slider.max:
                raise ValueError(
                    f"{name}={value} is outside the slider's range [{slider.min}, {slider.max}]"
                )
        observers = (self.alpha, self.tau, self.heads)
        for widget in observers:
            widget.unobserve(self._changed, names="value")
        try:
            if alpha is not None:
                self.alpha.value = alpha
            if tau is not None:
                self.tau.value = tau
            if heads is not None:
                self.heads.value = [tuple(h) for h in heads]
        finally:
            for widget in observers:
                widget.observe(self._changed, names="value")
        return self.update()

    def _changed(self, change: Any) -> None:
        self.update()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.panel)

    def __repr__(self) -> str:
        return f"Explorer({self.view!r})"


def explore(
    model: Model,
    prompt: LabeledPrompt,
    directions: Any = None,
    *,
    heads: Any = None,
    max_new_tokens: int | None = None,
) -> Explorer:
    """A notebook panel: move alpha or tau, pick heads, watch attention and the answer.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompt: A labelled prompt (a relevant document and distractors).
        directions: :class:`~focuslens.FocusDirections` for the alpha slider (learned, or
            ``FocusDirections.pretrained(...)``); without them alpha stays 0.
        heads: The heads chosen at first (default: the directions' top 3, else the
            prompt's top 3 contextual heads).
        max_new_tokens: Answer length (default: the prompt's, else 100).

    Returns:
        An :class:`Explorer`; it shows itself when it ends a cell. Its ``view`` is the
        :class:`~focuslens.evaluation.explore.ExplorerView` drawn now.
    """
    return Explorer(model, prompt, directions, heads=heads, max_new_tokens=max_new_tokens)


__all__ = ["ALPHA_RANGE", "TAU_RANGE", "Explorer", "explore"]
