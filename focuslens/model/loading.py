"""Loading models and checking that their hooks behave as focuslens assumes.

focuslens reads and writes attention through TransformerLens's hook names
(``blocks.{l}.attn.hook_q / hook_k / hook_rot_q / hook_rot_k / hook_attn_scores /
hook_pattern / hook_z``), which both ``HookedTransformer`` and a ``TransformerBridge``
in compatibility mode expose. Whether each hook does what its name says is a property
of the backend, so :func:`check_backend` tests it on the model itself instead of
assuming it: pattern rows sum to one, ``hook_attn_scores`` is pre-softmax, and a
write at ``hook_pattern`` changes the output.

Which loader should you use?
    * ``focuslens.load_demo_model()``: the shipped demo model, offline, in a second.
    * :func:`load_model` with a TransformerLens model name (``"gpt2"``,
      ``"meta-llama/Llama-3.2-3B-Instruct"``) when the weights are in your Hugging Face
      cache, or a local Hugging Face folder (booted as a ``TransformerBridge`` in
      compatibility mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focuslens.model.hooks import attn_hook, hooks, rotary
from focuslens.typing import Model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackendError(RuntimeError):
    """A model's hooks do not behave as focuslens needs."""


def hooked_transformer_class() -> type | None:
    """TransformerLens's ``HookedTransformer`` class, or None where it is gone (4.x)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


@dataclass
class BackendReport:
    """What :func:`check_backend` found. ``ok`` is True when every check passed.

    Attributes:
        backend: The model's class name.
        checks: Check name -> passed.
        points: Check name -> the hook point it is about (``""`` for the whole model).
        notes: Why a check failed, or what was not checked.
    """

    backend: str
    checks: dict[str, bool] = field(default_factory=dict)
    points: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def failed(self, points: tuple[str, ...] | None = None) -> list[str]:
        """Failed checks about the model as a whole or about one of ``points`` (all
        failed checks when ``points`` is None)."""
        return [
            name
            for name, passed in self.checks.items()
            if not passed and (points is None or self.points.get(name, "") in ("", *points))
        ]

    def add(self, name: str, passed: bool, point: str = "") -> None:
        self.checks[name] = bool(passed)
        self.points[name] = point

    def __str__(self) -> str:
        lines = [f"backend {self.backend}: {'ok' if self.ok else 'FAILED'}"]
        lines += [f"  [{'x' if v else ' '}] {k}" for k, v in self.checks.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _probe_tokens(model: Model, n: int = 8) -> torch.Tensor:
    device = next(model.parameters()).device
    vocab = int(model.cfg.d_vocab)
    return (torch.arange(n, device=device) * 7 + 3)[None] % vocab


def qk_points(model: Model) -> tuple[str, str]:
    """Where focuslens reads and steers queries and keys: after the rotary embedding
    (``hook_rot_q``, ``hook_rot_k``) on rotary models, ``hook_q``/``hook_k`` otherwise."""
    return ("hook_rot_q", "hook_rot_k") if rotary(model) else ("hook_q", "hook_k")


def used_points(model: Model) -> tuple[str, ...]:
    """The attention hook points focuslens reads or writes on this model: queries and keys
    (:func:`qk_points`), scores, pattern and head outputs."""
    return (*qk_points(model), "hook_attn_scores", "hook_pattern", "hook_z")


def _perturb(point: str, generator: torch.Generator) -> Callable[..., torch.Tensor]:
    """A write at ``point`` that must change the output: noise that differs per position
    and head (a vector added to every key would cancel in the softmax), or, for the
    pattern, uniform causal attention."""

    def noisy(x: torch.Tensor, hook: Any) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        finite = torch.isfinite(x)
        scale = x[finite].float().std().clamp(min=1e-3).to(x.dtype)
        return torch.where(finite, x + noise * scale, x)

    def uniform(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        n_q, n_k = pattern.shape[-2:]
        causal = torch.tril(torch.ones(n_q, n_k, device=pattern.device), diagonal=n_k - n_q)
        return (causal / causal.sum(-1, keepdim=True)).to(pattern.dtype).expand_as(pattern)

    return uniform if point == "hook_pattern" else noisy


def check_backend(model: Model, *, strict: bool = True) -> BackendReport:
    """Check, on the model itself, the hook behaviour that focuslens relies on.

    For every attention hook point focuslens uses (:func:`used_points`), on every layer:
    the point exists, it fires in a forward pass, and a write to it changes the output
    (a hook that never fires, or whose result is dropped, would make steering or an
    intervention a silent no-op). Also: pattern rows sum to one, ``hook_attn_scores`` is
    pre-softmax, and, where the model has a KV cache, a cached continuation equals one
    pass. About ``3 n_layers`` forward passes of 8 tokens; :func:`ensure_backend` runs it
    once per model.

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge``.
        strict: Raise :class:`BackendError` when a check fails.

    Example:
        >>> import focuslens
        >>> print(focuslens.model.loading.check_backend(focuslens.load_demo_model()).ok)
        True
    """
    report = BackendReport(backend=type(model).__name__)
    layers = range(model.cfg.n_layers)
    names = set(getattr(model, "hook_dict", {}))
    points = used_points(model)
    for point in points:
        missing = [attn_hook(l, point) for l in layers if attn_hook(l, point) not in names]
        report.add(f"{point} exists", not missing, point)
        if missing:
            report.notes.append(f"missing hook point {missing[0]}")
    if not report.ok:
        return _finish(report, strict)
    tokens = _probe_tokens(model)
    with torch.no_grad():
        base = _check_fire(model, report, tokens, points)
        generator = torch.Generator().manual_seed(0)
        residuals = [model(tokens, stop_at_layer=l + 1) for l in layers]
        for point in points:
            dead = []
            for l in layers:  # each layer alone, read right after it: no write hides another
                with hooks(model, [(attn_hook(l, point), _perturb(point, generator))]):
                    changed = model(tokens, stop_at_layer=l + 1)
                if torch.allclose(changed, residuals[l], atol=1e-6, rtol=0):
                    dead.append(attn_hook(l, point))
            report.add(f"a write at {point} takes effect", not dead, point)
            if dead:
                report.notes.append(f"a write at {dead[0]} did not change the output")
        _check_cache(model, report, tokens, base)
    return _finish(report, strict)


def _check_fire(
    model: Model, report: BackendReport, tokens: torch.Tensor, points: tuple[str, ...]
) -> torch.Tensor:
    """Record every used point in one pass: which fire, and what the pattern looks like."""
    captured: dict[str, torch.Tensor] = {}
    n_layers = model.cfg.n_layers

    def keep(x: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = x.detach().clone()

    with hooks(model, [(attn_hook(l, p), keep) for l in range(n_layers) for p in points]):
        base = model(tokens)
    for point in points:
        silent = [
            attn_hook(l, point) for l in range(n_layers) if attn_hook(l, point) not in captured
        ]
        report.add(f"{point} fires", not silent, point)
        if silent:
            report.notes.append(f"{silent[0]} never fired in a forward pass")
    if not report.checks["hook_pattern fires"] or not report.checks["hook_attn_scores fires"]:
        return base
    patterns = torch.stack(
        [captured[attn_hook(l, "hook_pattern")].float() for l in range(n_layers)]
    )
    sums = patterns.sum(-1)
    sinks = bool(getattr(model.cfg, "use_attention_sinks", False))
    report.add(
        "pattern rows sum to 1",
        sinks or torch.allclose(sums, torch.ones_like(sums), atol=1e-3),
        "hook_pattern",
    )
    if sinks:
        report.notes.append("the model has learned attention sinks: rows sum to less than 1")
    softmaxed = torch.softmax(captured[attn_hook(0, "hook_attn_scores")].float(), dim=-1)
    report.add(
        "hook_attn_scores is pre-softmax",
        sinks or torch.allclose(softmaxed, patterns[0], atol=1e-4),
        "hook_attn_scores",
    )
    return base


def _check_cache(
    model: Model, report: BackendReport, tokens: torch.Tensor, base: torch.Tensor
) -> None:
    """A prompt fed in two pieces through the KV cache gives one pass's logits."""
    from focuslens.model.kvcache import cached_forward, kv_cache_kind, new_cache

    if kv_cache_kind(model) is None:
        report.notes.append("no KV cache: generation re-runs the whole sequence each step")
        return
    cache = new_cache(model)
    cut = tokens.shape[1] // 2
    cached_forward(model, tokens[:, :cut], cache, logits=False)
    rest = cached_forward(model, tokens[:, cut:], cache)
    assert rest is not None
    scale = base.float().abs().max().clamp(min=1.0)
    same = bool(((rest.float() - base[:, cut:].float()).abs().max() / scale) < 1e-3)
    report.add("the KV cache continues a sequence", same, "kv_cache")
    if not same:
        report.notes.append(
            "logits of a cached continuation differ from one pass: the cache is not read "
            "(generation and chunked prefill would forget the prompt)"
        )


def _finish(report: BackendReport, strict: bool) -> BackendReport:
    if strict and not report.ok:
        raise BackendError(f"this model's hooks do not behave as focuslens needs:\n{report}")
    return report


_REPORT_ATTRIBUTE = "_focuslens_backend_report"


def ensure_backend(model: Model, points: tuple[str, ...] | None = None) -> BackendReport:
    """Run :func:`check_backend` once per model (cached on the model object) and raise
    :class:`BackendError` if a check about the model, or about one of ``points``, failed.

    Every focuslens entry point that hooks a model calls it first, so a backend whose
    hook never fires, or ignores a write, fails with the hook's name instead of giving a
    silent no-op. ``points``: the hook points (and ``"kv_cache"``) the caller needs;
    default all.
    """
    report = getattr(model, _REPORT_ATTRIBUTE, None)
    if not isinstance(report, BackendReport):
        report = check_backend(model, strict=False)
        try:
            object.__setattr__(model, _REPORT_ATTRIBUTE, report)
        except (AttributeError, TypeError):  # an object that takes no attributes
            pass
    failed = report.failed(points)
    if failed:
        raise BackendError(
            f"this model's hooks do not behave as focuslens needs ({', '.join(failed)}):\n{report}"
        )
    return report


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    **kwargs: Any,
) -> Any:
    """Load a model for focuslens, offline-friendly, with errors that say how to fix them.

    Args:
        name: ``"demo"`` (the shipped demo model), a local Hugging Face model folder
            (booted as a ``TransformerBridge`` in compatibility mode), or a model name:
            loaded by ``HookedTransformer.from_pretrained`` under transformer-lens 3.x, by
            ``TransformerBridge.boot_transformers`` under 4.x, where HookedTransformer is
            gone (weights must be in the local Hugging Face cache when offline).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        device: A torch device string.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if name == "demo":
        from focuslens.demo import load_demo_model

        model = load_demo_model()
        if dtype != "float32":
            model = model.to(DTYPES[dtype])
        return model.to(device) if device != "cpu" else model
    path = Path(name)
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is not a Hugging Face model folder (no config.json)")
        return _boot_bridge(str(path), dtype, device, **kwargs)
    hooked = hooked_transformer_class()
    if hooked is None:  # transformer-lens 4.x: every model is a bridge
        try:
            return _boot_bridge(name, dtype, device, **kwargs)
        except OSError as exc:
            raise _unreachable(name, exc) from None
    from transformer_lens import loading_from_pretrained

    try:
        official = loading_from_pretrained.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not a local folder and not a model TransformerLens knows; "
            "see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES, or pass 'demo'"
        ) from None
    try:
        return hooked.from_pretrained(official, dtype=DTYPES[dtype], device=device, **kwargs)
    except OSError as exc:
        raise _unreachable(official, exc) from None


def _boot_bridge(name: str, dtype: str, device: str, **kwargs: Any) -> Any:
    """A ``TransformerBridge`` in compatibility mode, from a folder or a Hub name."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, device=device, dtype=DTYPES[dtype], **kwargs)
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def _unreachable(name: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"the weights of {name} are not reachable: {exc}\nfocuslens loads weights from "
        "the local Hugging Face cache when offline. Download them once on a machine with a "
        f"network (`huggingface-cli download {name}`), or pass a local model folder."
    )


__all__ = [
    "DTYPES",
    "BackendError",
    "BackendReport",
    "check_backend",
    "ensure_backend",
    "hooked_transformer_class",
    "load_model",
    "qk_points",
    "used_points",
]
