"""Focus directions: learn, save, load and steer with them.

:class:`FocusDirections` holds ``d_q`` and ``d_k`` per layer; :func:`learn_focus_directions`
learns them as the paper does; :func:`steer` adds them to the chosen heads while a context is
open (``alpha="auto"`` picks the magnitude per prompt, :mod:`focuslens.directions.magnitude`).
:meth:`FocusDirections.pretrained` and :func:`pretrained_heads` give the authors' released
directions and head rankings, shipped with focuslens (:mod:`focuslens.directions.pretrained`).
"""

from focuslens.directions.closed_form import closed_form_gradient
from focuslens.directions.core import FORMAT, FocusDirections, ModelShape, hook_point_for
from focuslens.directions.inputs import LEARNING_RESPONSES
from focuslens.directions.learn import direction_cosine, learn_focus_directions
from focuslens.directions.magnitude import AutoAlpha
from focuslens.directions.pretrained import PRETRAINED, pretrained_heads
from focuslens.directions.steering import DEFAULT_K, FORMS, Steering, steer

__all__ = [
    "FORMAT",
    "FocusDirections",
    "hook_point_for",
    "ModelShape",
    "LEARNING_RESPONSES",
    "closed_form_gradient",
    "direction_cosine",
    "learn_focus_directions",
    "DEFAULT_K",
    "FORMS",
    "steer",
    "Steering",
    "AutoAlpha",
    "PRETRAINED",
    "pretrained_heads",
]
