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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focuslens.model.hooks import attn_hook, hooks
from focuslens.typing import Model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackendError(RuntimeError):
    """A model's hooks do not behave as focuslens needs."""


@dataclass
class BackendReport:
    """What :func:`check_backend` found. ``ok`` is True when every check passed."""

    backend: str
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def __str__(self) -> str:
        lines = [f"backend {self.backend}: {'ok' if self.ok else 'FAILED'}"]
        lines += [f"  [{'x' if v else ' '}] {k}" for k, v in self.checks.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _probe_tokens(model: Model, n: int = 8) -> torch.Tensor:
    device = next(model.parameters()).device
    vocab = int(model.cfg.d_vocab)
    return (torch.arange(n, device=device) * 7 + 3)[None] % vocab


def check_backend(model: Model, *, strict: bool = True) -> BackendReport:
    """Check, on the model itself, the hook behaviour that focuslens relies on.

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge``.
        strict: Raise :class:`BackendError` when a check fails.

    Example:
        >>> import focuslens
        >>> print(focuslens.model.loading.check_backend(focuslens.load_demo_model()).ok)
        True
    """
    report = BackendReport(backend=type(model).__name__)
    n_layers = model.cfg.n_layers
    names = set(getattr(model, "hook_dict", {}))
    needed = ["hook_attn_scores", "hook_pattern", "hook_z", "hook_q", "hook_k"]
    missing = [
        attn_hook(l, h) for l in range(n_layers) for h in needed if attn_hook(l, h) not in names
    ]
    report.checks["attention hook points exist"] = not missing
    if missing:
        report.notes.append(f"missing hook points, e.g. {missing[0]}")
        return _finish(report, strict)
    tokens = _probe_tokens(model)
    captured: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = x.detach().clone()

    with torch.no_grad():
        with hooks(
            model,
            [
                (attn_hook(l, h), keep)
                for l in range(n_layers)
                for h in ("hook_attn_scores", "hook_pattern")
            ],
        ):
            base = model(tokens)
        patterns = [captured[attn_hook(l, "hook_pattern")] for l in range(n_layers)]
        sums = torch.stack([p.float().sum(-1) for p in patterns])
        sinks = bool(getattr(model.cfg, "use_attention_sinks", False))
        report.checks["pattern rows sum to 1"] = sinks or bool(
            torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
        )
        if sinks:
            report.notes.append("the model has learned attention sinks: rows sum to less than 1")
        scores = captured[attn_hook(0, "hook_attn_scores")].float()
        softmaxed = torch.softmax(scores, dim=-1)
        report.checks["hook_attn_scores is pre-softmax"] = sinks or bool(
            torch.allclose(softmaxed, patterns[0].float(), atol=1e-4)
        )

        def uniform(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
            n = pattern.shape[-1]
            causal = torch.tril(torch.ones(n, n, device=pattern.device, dtype=pattern.dtype))
            return (causal / causal.sum(-1, keepdim=True)).expand_as(pattern)

        with hooks(model, [(attn_hook(n_layers - 1, "hook_pattern"), uniform)]):
            changed = model(tokens)
        report.checks["a write at hook_pattern takes effect"] = not torch.allclose(changed, base)
    return _finish(report, strict)


def _finish(report: BackendReport, strict: bool) -> BackendReport:
    if strict and not report.ok:
        raise BackendError(f"this model's hooks do not behave as focuslens needs:\n{report}")
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
            (booted as a ``TransformerBridge`` in compatibility mode), or a model name
            that ``HookedTransformer.from_pretrained`` knows (weights must be in the
            local Hugging Face cache when offline).
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
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            str(path), device=device, dtype=DTYPES[dtype], **kwargs
        )
        bridge.enable_compatibility_mode(disable_warnings=True)
        return bridge
    from transformer_lens import HookedTransformer, loading_from_pretrained

    try:
        official = loading_from_pretrained.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not a local folder and not a model TransformerLens knows; "
            "see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES, or pass 'demo'"
        ) from None
    try:
        return HookedTransformer.from_pretrained(
            official, dtype=DTYPES[dtype], device=device, **kwargs
        )
    except OSError as exc:
        raise RuntimeError(
            f"the weights of {official} are not reachable: {exc}\nfocuslens loads weights from "
            "the local Hugging Face cache when offline. Download them once on a machine with a "
            f"network (`huggingface-cli download {official}`), or pass a local model folder."
        ) from None


__all__ = [
    "DTYPES",
    "BackendError",
    "BackendReport",
    "check_backend",
    "load_model",
]
