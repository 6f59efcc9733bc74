"""Focus directions: per-head query (and key) vectors that steer attention to the context.

A :class:`FocusDirections` holds, for every layer, ``d_q`` and ``d_k`` of shape
``[n_heads, d_head]`` (one vector per *query* head, as in the authors' release), the
shape of the model they belong to, the hook point they act at (after the rotary
embedding for rotary models), a ranked list of heads, and a summary of how they were
made (METHOD.md section 4).

Where they come from:

* :func:`focuslens.learn_focus_directions` learns them on your model from labelled
  prompts (``method="learned"``, the authors' recipe) or computes the first gradient
  step in closed form from one cached pass (``method="closed_form"``);
* :meth:`FocusDirections.from_release` reads the authors' released ``.pth`` files and
  their ``relevant_heads.json``;
* :meth:`FocusDirections.load` reads what :meth:`FocusDirections.save` wrote
  (safetensors for the tensors, JSON metadata; nothing is unpickled).

What to do with them: ``with directions.steer(model, heads, alpha): ...`` adds
``alpha * d_q`` to the queries and ``alpha * d_k`` to the keys of the chosen heads;
``directions.steering(heads, alpha)`` is the same as an intervention object for
``focuslens.evaluate``. See :mod:`focuslens.directions.steering`.

Example:
    >>> import torch
    >>> from focuslens.directions import FocusDirections, ModelShape
    >>> shape = ModelShape(n_layers=2, n_heads=4, n_key_value_heads=2, d_head=8, rotary=True)
    >>> fd = FocusDirections(torch.ones(2, 4, 8), torch.zeros(2, 4, 8), shape,
    ...                      heads=[(1, 2), (0, 1)])
    >>> fd.q(1).shape, fd.top_heads(1)
    (torch.Size([4, 8]), HeadSet([L1H2]))
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from focuslens.directions.steering import Steering, steer
from focuslens.heads import HeadSet, ranked_from_json, str_head
from focuslens.model.hooks import n_kv_heads, rotary
from focuslens.typing import Model

FORMAT = "focuslens.FocusDirections/1"
"""The ``format`` field of the JSON metadata that :meth:`FocusDirections.save` writes."""

LayerDirections = Float[Tensor, "n_layers n_heads d_head"]


@dataclass(frozen=True)
class ModelShape:
    """The part of a model's shape that focus directions depend on.

    Attributes:
        n_layers: Number of layers.
        n_heads: Number of query heads.
        n_key_value_heads: Number of key/value heads (``n_heads`` without GQA).
        d_head: Head dimension.
        rotary: Whether the model uses rotary embeddings (directions act after them).
    """

    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    rotary: bool

    @classmethod
    def of(cls, model: Model) -> ModelShape:
        """The shape of a ``HookedTransformer`` (or anything with a TransformerLens ``cfg``)."""
        cfg = model.cfg
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            n_key_value_heads=n_kv_heads(model),
            d_head=int(cfg.d_head),
            rotary=rotary(model),
        )

    def __str__(self) -> str:
        return (
            f"{self.n_layers} layers x {self.n_heads} heads ({self.n_key_value_heads} KV heads), "
            f"d_head {self.d_head}, {'rotary' if self.rotary else 'no rotary'}"
        )


def hook_point_for(shape: ModelShape) -> str:
    """``"hook_rot_q/hook_rot_k"`` for rotary models, ``"hook_q/hook_k"`` otherwise."""
    return "hook_rot_q/hook_rot_k" if shape.rotary else "hook_q/hook_k"


def _installed_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _versions() -> dict[str, str]:
    import transformer_lens

    return {
        "focuslens": _installed_version("focuslens"),
        "transformer_lens": getattr(transformer_lens, "__version__", "?"),
        "torch": torch.__version__,
    }


@dataclass
class FocusDirections:
    """Query and key focus directions for every layer of one model shape.

    Attributes:
        d_q: ``[n_layers, n_heads, d_head]`` query directions (``d_q[layer]`` is the
            ``[n_heads, d_head]`` table of that layer). Zero for layers not learned.
        d_k: ``[n_layers, n_heads, d_head]`` key directions, one per *query* head.
        shape: The :class:`ModelShape` they belong to.
        heads: Heads ranked best first (e.g. contextual heads by relevant score); the
            default set for :meth:`top_heads`. Empty when unknown.
        layers: The layers that carry directions (learned or imported).
        hook_point: Where the vectors are added (``hook_rot_q/hook_rot_k`` or
            ``hook_q/hook_k``).
        training: How they were made: method, epochs, lr, seed, prompt count, per-layer
            loss history, the ``auto`` magnitude target, ...
        meta: Free-form provenance (model name, source folder, library versions).
    """

    # Plain Tensor annotations: __post_init__ checks the shapes with a message that names
    # the model shape (a jaxtyping annotation would preempt it).
    d_q: Tensor
    d_k: Tensor
    shape: ModelShape
    heads: list[tuple[int, int]] = field(default_factory=list)
    layers: list[int] | None = None
    hook_point: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = (self.shape.n_layers, self.shape.n_heads, self.shape.d_head)
        for name in ("d_q", "d_k"):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(
                    f"{name} has shape {got}, expected [n_layers, n_heads, d_head] = {want} "
                    f"for a model of {self.shape}"
                )
        self.d_q = self.d_q.detach()
        self.d_k = self.d_k.detach()
        for name in ("d_q", "d_k"):
            tensor = getattr(self, name)
            if not tensor.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(
                    f"{name} holds {bad} NaN or infinite value(s) of {tensor.numel()}; steering "
                    "with them would zero the steered heads' attention (a corrupted file?)"
                )
        for name in ("training", "meta"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        self.heads = [next(iter(HeadSet([h]))) for h in self.heads]  # ranked order kept
        HeadSet(self.heads)  # validates the pairs
        for layer, head in self.heads:
            if not (0 <= layer < self.shape.n_layers and 0 <= head < self.shape.n_heads):
                raise ValueError(
                    f"head {str_head((layer, head))} does not exist in a model of {self.shape}"
                )
        if self.layers is None:
            self.layers = list(range(self.shape.n_layers))
        self.layers = sorted(int(layer) for layer in self.layers)
        expected = hook_point_for(self.shape)
        if not self.hook_point:
            self.hook_point = expected
        elif self.hook_point != expected:
            raise ValueError(
                f"hook_point {self.hook_point!r} does not fit a model of {self.shape}: focus "
                f"directions act at {expected!r} (after the rotary embedding on rotary models)"
            )

    # ------------------------------------------------------------------ access
    def q(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        """The query directions of one layer."""
        return self.d_q[layer]

    def k(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        """The key directions of one layer (per query head)."""
        return self.d_k[layer]

    def top_heads(self, k: int | None = None) -> HeadSet:
        """The first ``k`` ranked heads (all of them when ``k`` is None).

        The selection follows the ranking; the returned :class:`HeadSet` is a set (sorted
        by layer and head). ``directions.heads[:k]`` keeps the ranked order.
        """
        if not self.heads:
            raise ValueError(
                "these directions carry no ranked heads; pass a HeadSet explicitly "
                "(e.g. from focuslens.contextual_scores(...).top_heads(k))"
            )
        if k is not None and not 0 < k <= len(self.heads):
            raise ValueError(f"k must be between 1 and {len(self.heads)}, got {k}")
        return HeadSet(self.heads[:k])

    def check_model(self, model: Model) -> None:
        """Refuse a model of another shape, naming both shapes."""
        got = ModelShape.of(model)
        if got != self.shape:
            raise ValueError(
                f"these focus directions belong to a model of {self.shape}, but the model has {got}"
            )

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> FocusDirections:
        """A copy with the tensors moved (the original is left as it is)."""
        return FocusDirections(
            d_q=self.d_q.to(device=device, dtype=dtype),
            d_k=self.d_k.to(device=device, dtype=dtype),
            shape=self.shape,
            heads=list(self.heads),
            layers=list(self.layers or []),
            hook_point=self.hook_point,
            training=dict(self.training),
            meta=dict(self.meta),
        )

    # ------------------------------------------------------------------ steering
    def steer(
        self, model: Model, heads: Any = None, alpha: float | str = 1.0, **kwargs: Any
    ) -> Any:
        """Context manager that steers ``model``; see :func:`focuslens.directions.steering.steer`."""
        return steer(self, model, heads, alpha, **kwargs)

    def steering(self, heads: Any = None, alpha: float | str = 1.0, **kwargs: Any) -> Any:
        """An intervention for ``focuslens.evaluate``; see :class:`focuslens.directions.steering.Steering`."""
        return Steering(self, heads, alpha, **kwargs)

    # ------------------------------------------------------------------ tables
    def norms(self) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
        """Per-head L2 norms of ``d_q`` and ``d_k``."""
        return {"q": self.d_q.float().norm(dim=-1), "k": self.d_k.float().norm(dim=-1)}

    def to_dataframe(self) -> Any:
        """Long format: one row per (layer, head) with the norms of ``d_q`` and ``d_k``,
        and the head's rank in :attr:`heads` (NaN when unranked)."""
        import pandas as pd

        norms = self.norms()
        rank = {h: i for i, h in enumerate(self.heads)}
        rows = [
            {
                "layer": layer,
                "head": head,
                "norm_q": float(norms["q"][layer, head]),
                "norm_k": float(norms["k"][layer, head]),
                "rank": rank.get((layer, head), float("nan")),
            }
            for layer in range(self.shape.n_layers)
            for head in range(self.shape.n_heads)
        ]
        return pd.DataFrame(rows)

    def figure(self, which: str = "q") -> Any:
        """A layer x head heatmap of the direction norms (a plotly ``go.Figure``)."""
        import plotly.graph_objects as go

        if which not in ("q", "k"):
            raise ValueError(f"which must be 'q' or 'k', got {which!r}")
        z = self.norms()[which].cpu().numpy()
        fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", colorbar={"title": "norm"}))
        fig.update_layout(
            title=f"|d_{which}| per head", xaxis_title="head", yaxis_title="layer", height=400
        )
        return fig

    def _repr_html_(self) -> str:
        """A notebook card: shape, heads, norms, training (:mod:`focuslens.plots.notebook`)."""
        from focuslens.plots import notebook

        return notebook.directions_html(self)

    def __repr__(self) -> str:
        method = self.training.get("method", "?")
        return (
            f"FocusDirections({self.shape}, layers={len(self.layers or [])}, "
            f"heads={len(self.heads)}, method={method!r})"
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Save to a safetensors file (tensors) with JSON metadata (never a pickle)."""
        from safetensors.torch import save_file

        tensors = {
            "d_q": self.d_q.detach().float().cpu().contiguous(),
            "d_k": self.d_k.detach().float().cpu().contiguous(),
        }
        meta = {
            "format": FORMAT,
            "shape": asdict(self.shape),
            "heads": [list(h) for h in self.heads],
            "layers": list(self.layers or []),
            "hook_point": self.hook_point,
            "training": self.training,
            "meta": self.meta,
            "versions": _versions(),
        }
        save_file(tensors, str(path), metadata={"focuslens": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> FocusDirections:
        """Load what :meth:`save` wrote; with ``model``, refuse a model of another shape.

        Raises:
            ValueError: For a truncated or foreign file, or a shape mismatch (naming
                both shapes).
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("focuslens")
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except FileNotFoundError:
            raise
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ValueError(
                f"{path} is not a readable FocusDirections file (truncated or corrupt?): {exc}"
            ) from None
        if header is None:
            raise ValueError(
                f"{path} has no focuslens metadata; was it written by FocusDirections.save?"
            )
        try:
            meta = json.loads(header)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: its focuslens metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{path} has format {found!r}, expected {FORMAT!r}")
        missing = [name for name in ("d_q", "d_k") if name not in tensors]
        if missing:
            raise ValueError(f"{path} lacks the tensors {missing}")
        try:
            out = cls(
                d_q=tensors["d_q"],
                d_k=tensors["d_k"],
                shape=ModelShape(**meta["shape"]),
                heads=[tuple(h) for h in meta.get("heads", [])],
                layers=meta.get("layers"),
                hook_point=meta.get("hook_point", ""),
                training=meta.get("training", {}),
                meta={**meta.get("meta", {}), "versions_saved": meta.get("versions", {})},
            )
        except (KeyError, TypeError, ValueError) as exc:
            what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}: not valid focus directions: {what}") from None
        if model is not None:
            out.check_model(model)
        return out

    @classmethod
    def from_release(
        cls, folder: str | Path, model: Model, *, heads_file: str | Path | None = None
    ) -> FocusDirections:
        """Import the authors' released directions onto ``model``.

        Reads ``head_q_directions_<layer>.pth`` and ``head_k_directions_<layer>.pth``
        (one pickled ``[n_heads, head_dim]`` tensor per layer) with
        ``torch.load(map_location="cpu", weights_only=True)``, so no code is unpickled,
        and the ranked ``relevant_heads.json``.

        Args:
            folder: The folder holding the ``.pth`` files (``head_features/<model>/
                direction_relevant`` in the release).
            model: The model they are for; its shape must match the files.
            heads_file: The ``relevant_heads.json`` to read. Default: one in ``folder``,
                else the release's ``contextual_heads_scores_full_seq/<model>/
                relevant_heads.json`` found by walking up from ``folder``. Without one,
                :attr:`heads` is empty.

        Raises:
            ValueError: When a layer file is missing or has the wrong shape (naming the
                file, its shape and the model's), or a head does not exist in the model.
        """
        folder = Path(folder)
        shape = ModelShape.of(model)
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder of released direction files")
        _check_rotate_half(model)
        found = {"q": {}, "k": {}}
        for path in folder.glob("head_*_directions_*.pth"):
            match = re.fullmatch(r"head_([qk])_directions_(\d+)\.pth", path.name)
            if match:
                found[match.group(1)][int(match.group(2))] = path
        if not found["q"]:
            raise ValueError(f"{folder} holds no head_q_directions_<layer>.pth files")
        want = list(range(shape.n_layers))
        for kind in ("q", "k"):
            extra = sorted(set(found[kind]) - set(want))
            missing = sorted(set(want) - set(found[kind]))
            if extra or missing:
                raise ValueError(
                    f"{folder} has head_{kind}_directions files for layers {sorted(found[kind])}"
                    f", but the model has layers 0..{shape.n_layers - 1} "
                    f"(missing {missing}, extra {extra}); the release is for another model "
                    f"than this one ({shape})"
                )
        tables = {
            kind: [_load_release_tensor(found[kind][l], shape) for l in want] for kind in found
        }
        heads: list[tuple[int, int]] = []
        heads_path = Path(heads_file) if heads_file is not None else _find_heads_file(folder)
        if heads_path is not None:
            heads = ranked_from_json(heads_path)
            HeadSet(heads).validate(model, allow_empty=True)
        return cls(
            d_q=torch.stack(tables["q"]),
            d_k=torch.stack(tables["k"]),
            shape=shape,
            heads=heads,
            layers=want,
            training={"method": "release"},
            meta={
                "source": str(folder),
                "heads_file": None if heads_path is None else str(heads_path),
                "model": getattr(model.cfg, "model_name", None),
            },
        )

    @classmethod
    def pretrained(cls, name: str, model: Model | None = None) -> FocusDirections:
        """The authors' released directions for ``name``, shipped with focuslens.

        No download: the release (``billzyx/focus_direction``, MIT licence) is converted
        once to safetensors and shipped in the package
        (:mod:`focuslens.directions.pretrained`). The result equals what
        :meth:`from_release` reads from the release's files, ranked heads included.

        Args:
            name: A Hugging Face model id: ``"meta-llama/Llama-3.2-3B-Instruct"``,
                ``"Qwen/Qwen2.5-7B-Instruct"`` or ``"mistralai/Ministral-8B-Instruct-2410"``
                (any case).
            model: With a model, its shape is checked as in :meth:`from_release`.

        Raises:
            ValueError: For an unknown name (listing the known ones), or a model of
                another shape (naming both shapes).

        Example:
            >>> fd = FocusDirections.pretrained("meta-llama/Llama-3.2-3B-Instruct")
            >>> tuple(fd.d_q.shape), fd.top_heads(2)
            ((28, 24, 128), HeadSet([L12H1, L13H23]))
        """
        from focuslens.directions.pretrained import pretrained_file, pretrained_name

        known = pretrained_name(name)
        out = cls.load(pretrained_file(known))
        out.meta["model"] = known
        if model is not None:
            out.check_model(model)
            _check_rotate_half(model)
        return out


def _check_rotate_half(model: Model) -> None:
    """Refuse a rotary model whose rotary pairs are adjacent: the released vectors are in
    Hugging Face's rotate-half coordinates."""
    if rotary(model) and getattr(model.cfg, "rotary_adjacent_pairs", False):
        raise ValueError(
            "the released directions are in Hugging Face's rotate-half coordinates, but "
            "this model uses adjacent rotary pairs (cfg.rotary_adjacent_pairs=True)"
        )


def _load_release_tensor(path: Path, shape: ModelShape) -> Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read {path} as a tensor file (weights_only=True): {exc}"
        ) from None
    if not isinstance(value, Tensor):
        raise ValueError(f"{path} holds a {type(value).__name__}, expected a tensor")
    want = (shape.n_heads, shape.d_head)
    if tuple(value.shape) != want:
        raise ValueError(
            f"{path.name} has shape {tuple(value.shape)}, but the model needs "
            f"[n_heads, d_head] = {want} (model: {shape})"
        )
    value = value.detach().float().clone()
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise ValueError(f"{path} holds {bad} NaN or infinite value(s) of {value.numel()}")
    return value


def _find_heads_file(folder: Path) -> Path | None:
    """``relevant_heads.json`` beside the files, else in the release layout above them."""
    local = folder / "relevant_heads.json"
    if local.is_file():
        return local
    # Release layout: <root>/head_features/<model>/direction_relevant/*.pth and
    # <root>/contextual_heads_scores_full_seq/<model>/relevant_heads.json
    for up in folder.parents:
        if up.name == "head_features":
            model_dir = folder.relative_to(up).parts[0]
            candidate = up.parent / "contextual_heads_scores_full_seq" / model_dir
            candidate = candidate / "relevant_heads.json"
            return candidate if candidate.is_file() else None
    return None


__all__ = [
    "FORMAT",
    "FocusDirections",
    "hook_point_for",
    "ModelShape",
]
