"""Head sets: which attention heads an analysis or intervention is about.

A :class:`HeadSet` is a sorted, hashable set of ``(layer, head)`` pairs, printed as
``L13H23`` and convertible to and from the authors' ``[[layer, head], ...]`` JSON
(:func:`ranked_from_json`).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from pathlib import Path

import torch

from focuslens.typing import Model


def _index(value: object, item: object) -> int:
    """A head's layer or index: a non-negative int (numpy and 0-d torch integers too; not a
    bool, not a float)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        out = -1
    if out < 0:
        raise ValueError(f"a head's layer and index must be non-negative ints, got {item!r}")
    return out


class HeadSet:
    """A sorted, immutable set of ``(layer, head)`` pairs.

    Example:
        >>> hs = HeadSet([(1, 3), (0, 2), (1, 3)])
        >>> hs
        HeadSet([L0H2, L1H3])
        >>> len(hs), (1, 3) in hs, hs.by_layer()
        (2, True, {0: [2], 1: [3]})
        >>> HeadSet.from_json(hs.to_json()) == hs
        True
    """

    __slots__ = ("_heads",)

    def __init__(self, heads: Iterable[tuple[int, int]] | HeadSet = ()) -> None:
        pairs = set()
        for item in heads:
            if isinstance(item, str):
                item = _parse(item)
            try:
                layer, head = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"a head must be a (layer, head) pair or 'L<l>H<h>', got {item!r}"
                ) from None
            pairs.add((_index(layer, item), _index(head, item)))
        self._heads: tuple[tuple[int, int], ...] = tuple(sorted(pairs))

    def __iter__(self):
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __contains__(self, item: object) -> bool:
        return item in self._heads

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadSet) and other._heads == self._heads

    def __hash__(self) -> int:
        return hash(self._heads)

    def __repr__(self) -> str:
        return f"HeadSet([{', '.join(str_head(h) for h in self._heads)}])"

    def __str__(self) -> str:
        return " ".join(str_head(h) for h in self._heads)

    def __or__(self, other: Iterable[tuple[int, int]]) -> HeadSet:
        return HeadSet([*self._heads, *HeadSet(other)])

    def __and__(self, other: Iterable[tuple[int, int]]) -> HeadSet:
        other_set = set(HeadSet(other))
        return HeadSet(h for h in self._heads if h in other_set)

    def __sub__(self, other: Iterable[tuple[int, int]]) -> HeadSet:
        other_set = set(HeadSet(other))
        return HeadSet(h for h in self._heads if h not in other_set)

    def by_layer(self) -> dict[int, list[int]]:
        """Layer -> sorted head indices."""
        out: dict[int, list[int]] = {}
        for layer, head in self._heads:
            out.setdefault(layer, []).append(head)
        return out

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self._heads})

    def mask(self, n_layers: int, n_heads: int) -> torch.Tensor:
        """``[n_layers, n_heads]`` bool mask of the set."""
        m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        for layer, head in self._heads:
            m[layer, head] = True
        return m

    def validate(self, model: Model, *, allow_empty: bool = False) -> HeadSet:
        """Check every head exists in ``model``; returns self for chaining."""
        if not self._heads and not allow_empty:
            raise ValueError("the head set is empty; give at least one (layer, head)")
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        for layer, head in self._heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(
                    f"head {str_head((layer, head))} does not exist in a model with "
                    f"{n_layers} layers and {n_heads} heads"
                )
        return self

    def to_list(self) -> list[list[int]]:
        """The authors' format: ``[[layer, head], ...]``."""
        return [[layer, head] for layer, head in self._heads]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> HeadSet:
        """Read ``[[layer, head], ...]`` from a JSON string or file (e.g. the authors'
        ``relevant_heads.json``; use :func:`ranked_from_json` to keep their order)."""
        return cls(ranked_from_json(text_or_path))


def ranked_from_json(text_or_path: str | Path) -> list[tuple[int, int]]:
    """``[[layer, head], ...]`` from JSON text or a file, in file order (best first)."""
    text = str(text_or_path)
    path = Path(text)
    if not text.lstrip().startswith("[") and path.exists():
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON list of [layer, head] pairs: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(p, list) and len(p) == 2 for p in data):
        raise ValueError(f"expected a JSON list of [layer, head] pairs, got {str(data)[:80]}")
    return [(int(layer), int(head)) for layer, head in data]


def str_head(head: tuple[int, int]) -> str:
    """``(13, 23)`` -> ``"L13H23"``."""
    return f"L{head[0]}H{head[1]}"


def _parse(text: str) -> tuple[int, int]:
    t = text.strip().upper()
    if t.startswith("L") and "H" in t:
        layer, head = t[1:].split("H", 1)
        if layer.isdigit() and head.isdigit():
            return int(layer), int(head)
    raise ValueError(f"cannot read head {text!r}; write it as 'L<layer>H<head>', e.g. 'L13H23'")


__all__ = [
    "HeadSet",
    "ranked_from_json",
    "str_head",
]
