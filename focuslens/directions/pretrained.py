"""The authors' released focus directions, shipped inside focuslens.

The authors of the paper released focus directions and ranked contextual heads for three
instruction-tuned models (repository ``billzyx/focus_direction``, commit ``3595004``, MIT
licence). focuslens ships them, converted once to its own format by
``scripts/convert_release.py``, in the folder ``focuslens/directions/released/``:

* ``<slug>.safetensors``: the directions as :meth:`FocusDirections.save
  <focuslens.directions.FocusDirections.save>` writes them (float32 ``d_q`` and ``d_k``,
  the model's shape and the ranked heads in the JSON metadata; nothing to unpickle);
* ``<slug>.heads.json``: the release's ``relevant_heads.json``, byte for byte;
* ``LICENSE`` (the authors' MIT licence) and ``README.md`` (attribution, provenance).

So no download and no clone is needed::

    directions = FocusDirections.pretrained("meta-llama/Llama-3.2-3B-Instruct", model)
    heads = focuslens.pretrained_heads("meta-llama/Llama-3.2-3B-Instruct")[:20]

Names are Hugging Face model ids (:data:`PRETRAINED`; case does not matter). This
module is the registry; :meth:`FocusDirections.pretrained
<focuslens.directions.FocusDirections.pretrained>` loads the directions and checks them
against a model.

Example:
    >>> pretrained_heads("meta-llama/Llama-3.2-3B-Instruct")[:3]
    [(13, 23), (12, 1), (15, 18)]
"""

from __future__ import annotations

from pathlib import Path

from focuslens.heads import ranked_from_json

RELEASED = Path(__file__).resolve().parent / "released"
"""The folder of the shipped release files."""

SOURCE = "billzyx/focus_direction@3595004"
"""The repository and commit the shipped files were converted from."""

PRETRAINED: dict[str, str] = {
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama_Llama-3.2-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen_Qwen2.5-7B-Instruct",
    "mistralai/Ministral-8B-Instruct-2410": "mistralai_Ministral-8B-Instruct-2410",
}
"""Hugging Face model id -> the file stem of its shipped directions (the release's folder
name: the id with ``/`` replaced by ``_``)."""


def pretrained_name(name: str) -> str:
    """The registry's spelling of ``name`` (a Hugging Face id, any case).

    Raises:
        ValueError: For a name without released directions, listing the known ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a Hugging Face model id (a str), got {name!r}")
    by_lower = {known.lower(): known for known in PRETRAINED}
    found = by_lower.get(name.strip().lower())
    if found is None:
        raise ValueError(
            f"no released focus directions for {name!r}; focuslens ships them for "
            f"{', '.join(repr(n) for n in PRETRAINED)}"
        )
    return found


def pretrained_file(name: str) -> Path:
    """The shipped safetensors file of ``name`` (see :func:`pretrained_name`)."""
    return _shipped(RELEASED / f"{PRETRAINED[pretrained_name(name)]}.safetensors")


def pretrained_heads(name: str) -> list[tuple[int, int]]:
    """The authors' ranking of every attention head of a released model, best first.

    Args:
        name: A Hugging Face model id of :data:`PRETRAINED` (any case).

    Returns:
        ``(layer, head)`` pairs, 0-indexed, best first: all heads of the model, ranked by
        the authors' contextual score. ``pretrained_heads(name)[:20]`` are the 20 heads
        the authors steer.

    Raises:
        ValueError: For a name without released directions, listing the known ones.
    """
    path = _shipped(RELEASED / f"{PRETRAINED[pretrained_name(name)]}.heads.json")
    return ranked_from_json(path)


def _shipped(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from this installation of focuslens (package data not "
            "installed?); reinstall focuslens, or run scripts/convert_release.py"
        )
    return path


__all__ = [
    "PRETRAINED",
    "RELEASED",
    "SOURCE",
    "pretrained_file",
    "pretrained_heads",
    "pretrained_name",
]
