"""The :class:`Intervention` protocol: anything that changes a model while a context is open.

Split-softmax, PASTA and head ablation (:mod:`focuslens.interventions.oracles`) and focus-direction
steering (:class:`focuslens.directions.Steering`) all follow it, so :func:`focuslens.evaluate`
and the experiments run any of them the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from focuslens.model.loading import ensure_backend
from focuslens.prompts.spans import LabeledPrompt
from focuslens.typing import Model


@runtime_checkable
class Intervention(Protocol):
    """Anything that changes a model while a context is open.

    ``apply(model, prompts)`` returns a context manager; while it is open, forward
    passes of ``model`` on (prefixes of) ``prompts`` are intervened on, and on exit the
    model is exactly as before (hooks removed, also when the body raises). ``prompts``
    are the labelled prompts about to be run, in batch order: an oracle intervention
    (split-softmax) reads their spans, a steering one (focus directions) ignores them.

    Example:
        >>> import contextlib
        >>> class NoOp:
        ...     def apply(self, model, prompts):
        ...         return contextlib.nullcontext()
        >>> isinstance(NoOp(), Intervention)
        True
    """

    def apply(
        self, model: Model, prompts: Sequence[LabeledPrompt]
    ) -> AbstractContextManager[Any]: ...


def applied(
    intervention: Intervention | None, model: Model, prompts: list[LabeledPrompt]
) -> AbstractContextManager[Any]:
    if intervention is None:
        return contextlib.nullcontext()
    ensure_backend(model)
    return intervention.apply(model, prompts)


__all__ = [
    "applied",
    "Intervention",
]
