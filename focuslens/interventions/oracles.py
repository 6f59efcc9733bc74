"""Attention-reweighting interventions on chosen heads: split-softmax, PASTA, ablation.

Each intervention is a small object whose ``apply(model, prompts)`` returns a context
manager. While it is open, every forward pass of ``model`` on (prefixes of) those
prompts is intervened on, in the chosen heads only, also during generation with the KV
cache; on exit every hook is removed, also when the body raises::

    boost = SplitSoftmax(top_k(scores, 5), tau=0.1)
    with boost.apply(model, prompts):
        logits = model(tokens)           # or focuslens.evaluate(..., intervention=boost)

Which one should you use?

* :class:`SplitSoftmax` (METHOD.md section 3) rescales, after the softmax, the attention
  mass ``p`` that a query row gives to the relevant span to exactly ``p ** tau``, keeping
  the split inside the span and outside it (rows still sum to 1). ``tau < 1`` focuses
  on the span, ``tau = 1`` is the identity, ``tau > 1`` distracts. It is the paper's
  oracle: it needs the span labels of the prompts it runs on.
* :class:`Pasta` (Zhang et al. 2023) adds ``log(alpha)`` to the attention logits of the
  keys outside the relevant span (``boost="relevant"``) or inside it
  (``boost="others"``), before the softmax. With ``alpha < 1`` and the default it is a
  softer version of the same boost: the mass on the span rises by an amount that depends
  on the row, not to a set target. Also an oracle.
* :class:`HeadAblation` replaces the heads' outputs (``hook_z``) by zero or by their mean
  over reference prompts (:func:`head_means`): the same experiment with the opposite
  sign. It needs no span labels.

Where: all query positions by default, as in the paper; ``positions="prompt"`` or
``"generated"`` restricts the intervention to the prompt's rows or to the response's
(teacher-forced or generated) rows, using :mod:`focuslens.model.hooks`.

Batches: the prompts given to ``apply`` are the rows of the batch, in order, right
padded (as :func:`focuslens.contextual_scores` batches them). Positions of a forward
pass past a prompt's labelled tokens (generated tokens, padding) are outside its span.
A forward pass whose batch size differs from the number of prompts is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from focuslens.heads import HeadSet
from focuslens.model import hooks as hooking
from focuslens.model.hooks import attn_hook, layer_hooks
from focuslens.prompts.batch import PromptBatch, batches, pad_token_id, tokenized_prompts
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.typing import AttnScores, Model, Pattern

PromptsLike = Any
"""A LabeledPrompt or TokenizedPrompt, or a sequence of them (checked at run time, with
errors that name the offending prompt)."""


@dataclass(frozen=True)
class SpanBatch:
    """The labels an intervention reads, one row per prompt of the batch.

    Attributes:
        relevant: ``[batch, pos]`` bool, True on the relevant span's tokens.
        n_prompt: ``[batch]`` prompt lengths (BOS included); later positions are generated.
        has_span: ``[batch]`` bool, False for prompts without a relevant span.
    """

    relevant: torch.Tensor
    n_prompt: torch.Tensor
    has_span: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.n_prompt.shape[0])

    def key_mask(self, n_key: int, device: Any) -> torch.Tensor:
        """``[batch, n_key]`` relevant-key mask, cut or padded (False) to ``n_key`` keys."""
        mask = self.relevant[:, :n_key]
        if mask.shape[1] < n_key:
            mask = torch.nn.functional.pad(mask, (0, n_key - mask.shape[1]), value=False)
        return mask.to(device)

    def check(self, batch: int, what: str) -> None:
        if batch != self.size:
            raise ValueError(
                f"{what} was applied to {self.size} prompt(s) but a forward pass has batch size "
                f"{batch}; pass the prompts of the batch, in order, to apply()"
            )


def span_batch(tps: Sequence[TokenizedPrompt]) -> SpanBatch:
    """The :class:`SpanBatch` of tokenised prompts (right padded to the longest)."""
    batch = PromptBatch.of(tps)
    return SpanBatch(
        relevant=batch.relevant_mask(), n_prompt=batch.n_prompt, has_span=batch.has_relevant
    )


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class _OnHeads:
    """Shared parts: a non-empty head set, query positions, hooks as a context."""

    hook_point = ""

    def __init__(self, heads: Any, positions: str) -> None:
        self.heads = HeadSet(heads)
        if not self.heads:
            raise ValueError(
                f"{type(self).__name__} needs at least one (layer, head); got an empty set"
            )
        hooking.check_positions(positions)
        self.positions = positions

    def _hooks(self, model: Model, hook: Any) -> list[tuple[str, Any]]:
        out = []
        for layer, heads in self.heads.validate(model).by_layer().items():
            index = torch.tensor(heads)
            out.append((attn_hook(layer, self.hook_point), partial(hook, heads=index, layer=layer)))
        return out

    def _rows(self, batch: SpanBatch, n_query: int, n_key: int, device: Any) -> torch.Tensor:
        """``[batch, n_query]`` rows acted on: chosen positions of prompts with a span."""
        absolute = hooking.absolute_query_positions(n_query, n_key, device)
        rows = hooking.query_row_mask(self.positions, absolute, batch.n_prompt.to(device))
        return rows & batch.has_span.to(device)[:, None]


class _SpanOracle(_OnHeads):
    """An intervention that reads the relevant span of each prompt."""

    def __init__(self, heads: Any, positions: str, missing: str) -> None:
        super().__init__(heads, positions)
        if missing not in ("raise", "skip"):
            raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
        self.missing = missing

    def _spans(self, model: Model, prompts: PromptsLike) -> SpanBatch:
        name = type(self).__name__
        if prompts is None:
            raise ValueError(
                f"{name} is an oracle intervention: it needs the labelled prompts of the batch "
                "(their relevant spans); call apply(model, prompts)"
            )
        tps = tokenized_prompts(model, prompts)
        absent = [i for i, tp in enumerate(tps) if tp.relevant is None]
        if absent and self.missing == "raise":
            raise ValueError(
                f"{name} is an oracle intervention and prompt(s) {absent} have no relevant "
                "span (relevant=None); label one, or pass missing='skip' to leave those prompts "
                "untouched"
            )
        return span_batch(tps)

    def apply(self, model: Model, prompts: PromptsLike) -> AbstractContextManager[Any]:
        """A context manager that intervenes on forward passes over ``prompts``.

        Args:
            model: A ``HookedTransformer``.
            prompts: The labelled prompts of the batch, in order (LabeledPrompt or
                TokenizedPrompt, one or a list).
        """
        batch = self._spans(model, prompts)
        return hooking.hooks(model, self._hooks(model, partial(self._hook, batch=batch)))

    def _hook(
        self, act: torch.Tensor, hook: Any, *, heads: torch.Tensor, layer: int, batch: SpanBatch
    ):
        raise NotImplementedError


def split_softmax(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    span: Bool[Tensor, "batch key_pos"],
    tau: float,
) -> Float[Tensor, "batch head_index query_pos key_pos"]:
    """Rescale each row's mass ``p`` on the span to ``p ** tau`` (METHOD.md section 3).

    ``A'_ij = A_ij p'/p`` inside the span and ``A_ij (1 - p')/(1 - p)`` outside, with
    ``p' = p ** tau``; rows with ``p = 0`` or ``p = 1`` are left as they are.

    Precision: the pattern is rescaled in float32 (float64 stays float64; half
    precision is computed in float32 and cast back); the per-row factors come from ``p``
    in float64. With ``tau = 1`` every factor is exactly 1, so the input comes back bit
    for bit.

    Example:
        >>> a = torch.tensor([[[[0.5, 0.25, 0.25]]]])
        >>> out = split_softmax(a, torch.tensor([[False, True, False]]), tau=0.5)
        >>> [round(x, 4) for x in out[0, 0, 0].tolist()]  # 0.25 ** 0.5 = 0.5 on the span
        [0.3333, 0.5, 0.1667]
    """
    a = pattern.to(torch.promote_types(pattern.dtype, torch.float32))
    inside = span[:, None, :, None].to(a.device, a.dtype)  # [batch, 1, key_pos, 1]
    p = (a @ inside).double()  # [batch, head, query_pos, 1], no full-size temporary
    p_new = p**tau
    biggest = torch.finfo(a.dtype).max  # p'/p overflows float32 only for subnormal p
    scale_in = torch.where(p > 0, p_new / p, 1.0).clamp(max=biggest).to(a.dtype)
    scale_out = torch.where(p < 1, (1 - p_new) / (1 - p), 1.0).clamp(max=biggest).to(a.dtype)
    mask = inside[:, :, :, 0][:, :, None, :].bool()  # [batch, 1, 1, key_pos]
    return torch.where(mask, a * scale_in, a * scale_out).to(pattern.dtype)


class SplitSoftmax(_SpanOracle):
    """Set the attention mass on the relevant span to ``p ** tau`` in chosen heads.

    Args:
        heads: ``(layer, head)`` pairs or a :class:`~focuslens.HeadSet` (non-empty).
        tau: Exponent, > 0: ``tau < 1`` focuses on the relevant span (the paper's strong
            boost is 0.1), 1 is the identity, ``tau > 1`` takes mass away from it.
        positions: Query rows acted on: ``"all"``, ``"prompt"`` or ``"generated"``.
        missing: ``"raise"`` (default) refuses prompts without a relevant span;
            ``"skip"`` leaves them untouched.

    Acts at ``hook_pattern``: the rescaled pattern is what the values are mixed with.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(2, n_documents=8, seed=0)
        >>> boost = SplitSoftmax([(1, 0)], tau=0.1)
        >>> tokens = focuslens.tokenize_prompt(model, prompts[0]).tokens[None]
        >>> with boost.apply(model, prompts[:1]):
        ...     logits = model(tokens)
        >>> kw = {"heads": [(1, 0)], "progress": False}
        >>> plain = focuslens.evaluate(model, prompts, **kw).to_dataframe()
        >>> boosted = focuslens.evaluate(model, prompts, intervention=boost, **kw).to_dataframe()
        >>> bool((boosted["attn_relevant"] > plain["attn_relevant"]).all())
        True
    """

    hook_point = "hook_pattern"

    def __init__(
        self,
        heads: Any,
        tau: float,
        *,
        positions: str = "all",
        missing: str = "raise",
    ) -> None:
        self.tau = _check_number("tau", tau)
        super().__init__(heads, positions, missing)

    def _hook(
        self, pattern: Pattern, hook: Any, *, heads: torch.Tensor, layer: int, batch: SpanBatch
    ):
        b, _, n_query, n_key = pattern.shape
        batch.check(b, "SplitSoftmax")
        device = pattern.device
        heads = heads.to(device)
        sub = pattern.index_select(1, heads)
        new = split_softmax(sub, batch.key_mask(n_key, device), self.tau)
        rows = self._rows(batch, n_query, n_key, device)[:, None, :, None]
        return pattern.index_copy(1, heads, torch.where(rows, new, sub))

    def __repr__(self) -> str:
        return f"SplitSoftmax({self.heads!r}, tau={self.tau}, positions={self.positions!r})"


class Pasta(_SpanOracle):
    """PASTA-style attention steering: add ``log(alpha)`` to the logits of some keys.

    Args:
        heads: ``(layer, head)`` pairs or a :class:`~focuslens.HeadSet` (non-empty).
        alpha: Scaling of the attention weights of the down-weighted keys before
            renormalisation, > 0 (Zhang et al. use 0.01); 1 is the identity.
        positions: Query rows acted on: ``"all"``, ``"prompt"`` or ``"generated"``.
        boost: ``"relevant"`` down-weights the keys outside the relevant span (so the
            span gains attention when ``alpha < 1``); ``"others"`` down-weights the span.
        missing: ``"raise"`` (default) or ``"skip"`` prompts without a relevant span.

    Acts at ``hook_attn_scores`` (after the causal mask, before the softmax): masked keys
    stay masked.
    """

    hook_point = "hook_attn_scores"

    def __init__(
        self,
        heads: Any,
        alpha: float,
        *,
        positions: str = "all",
        boost: str = "relevant",
        missing: str = "raise",
    ) -> None:
        self.alpha = _check_number("alpha", alpha)
        if boost not in ("relevant", "others"):
            raise ValueError(f"boost must be 'relevant' or 'others', got {boost!r}")
        self.boost = boost
        super().__init__(heads, positions, missing)

    def _hook(
        self, scores: AttnScores, hook: Any, *, heads: torch.Tensor, layer: int, batch: SpanBatch
    ):
        b, _, n_query, n_key = scores.shape
        batch.check(b, "Pasta")
        device = scores.device
        heads = heads.to(device)
        span = batch.key_mask(n_key, device)
        target = ~span if self.boost == "relevant" else span
        rows = self._rows(batch, n_query, n_key, device)
        act = rows[:, None, :, None] & target[:, None, None, :]
        sub = scores.index_select(1, heads)
        new = torch.where(act, sub + math.log(self.alpha), sub)
        return scores.index_copy(1, heads, new)

    def __repr__(self) -> str:
        return (
            f"Pasta({self.heads!r}, alpha={self.alpha}, positions={self.positions!r}, "
            f"boost={self.boost!r})"
        )


# ---------------------------------------------------------------------------- ablation
def head_means(
    model: Model, prompts: PromptsLike, *, batch_size: int = 8
) -> Float[Tensor, "n_layers n_heads d_head"]:
    """Mean of each head's output ``hook_z`` over every real token of ``prompts``.

    The reference for mean-ablation (:class:`HeadAblation` with ``mode="mean"``):
    prompt and response tokens of every prompt count, padding does not.
    """
    tps = tokenized_prompts(model, prompts)
    n_layers = model.cfg.n_layers
    sums: dict[int, torch.Tensor] = {}
    count = 0
    device = next(model.parameters()).device

    def add(z: torch.Tensor, hook: Any, *, layer: int, real: torch.Tensor) -> None:
        total = (z.double() * real.to(z.device)[:, :, None, None]).sum((0, 1)).cpu()
        sums[layer] = sums.get(layer, 0) + total

    for _, batch in batches(tps, batch_size, pad_token_id(model)):
        real = batch.real.float()
        fwd = layer_hooks(range(n_layers), "hook_z", partial(add, real=real))
        with torch.no_grad(), hooking.hooks(model, fwd):
            model(batch.tokens.to(device), return_type=None)
        count += int(real.sum())
    return torch.stack([sums[l] / count for l in range(n_layers)]).float()


class HeadAblation(_OnHeads):
    """Replace chosen heads' outputs (``hook_z``) by zero or by their mean.

    Args:
        heads: ``(layer, head)`` pairs or a :class:`~focuslens.HeadSet` (non-empty).
        mode: ``"zero"`` or ``"mean"``.
        means: ``[n_layers, n_heads, d_head]`` reference outputs for ``mode="mean"``,
            from :func:`head_means` on reference prompts.
        positions: Query rows acted on: ``"all"``, ``"prompt"`` or ``"generated"``.

    No span labels are needed; ``apply(model)`` works without prompts when
    ``positions="all"``, otherwise the prompts give each row's prompt length.
    """

    hook_point = "hook_z"

    def __init__(
        self,
        heads: Any,
        mode: str = "zero",
        *,
        means: torch.Tensor | None = None,
        positions: str = "all",
    ) -> None:
        super().__init__(heads, positions)
        if mode not in ("zero", "mean"):
            extra = (
                "; resample ablation needs donor runs: use ablation_effects(mode='resample') "
                "or focuslens.interventions.zpatch.patching"
                if mode == "resample"
                else ""
            )
            raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}{extra}")
        if mode == "mean" and means is None:
            raise ValueError(
                "mode='mean' needs means=[n_layers, n_heads, d_head]; compute them with "
                "focuslens.interventions.head_means(model, reference_prompts)"
            )
        self.mode = mode
        self.means = means

    def apply(self, model: Model, prompts: PromptsLike = None) -> AbstractContextManager[Any]:
        """A context manager that ablates the heads in forward passes of ``model``."""
        cfg = model.cfg
        if self.means is not None:
            want = (cfg.n_layers, cfg.n_heads, cfg.d_head)
            if tuple(self.means.shape) != want:
                raise ValueError(
                    f"means has shape {tuple(self.means.shape)}, expected "
                    f"[n_layers, n_heads, d_head] = {list(want)} for this model"
                )
        n_prompt = None
        if self.positions != "all":
            if prompts is None:
                raise ValueError(
                    f"positions={self.positions!r} needs the prompts of the batch (their "
                    "prompt lengths); call apply(model, prompts)"
                )
            n_prompt = torch.tensor([tp.n_prompt for tp in tokenized_prompts(model, prompts)])
        return self._context(model, n_prompt)

    @contextmanager
    def _context(self, model: Model, n_prompt: torch.Tensor | None):
        with ExitStack() as stack:
            tracker = None
            if n_prompt is not None:
                tracker = stack.enter_context(hooking.PositionTracker(model))
            hook = partial(self._hook, n_prompt=n_prompt, tracker=tracker)
            stack.enter_context(hooking.hooks(model, self._hooks(model, hook)))
            yield model

    def _hook(
        self,
        z: Float[Tensor, "batch pos head_index d_head"],
        hook: Any,
        *,
        heads: torch.Tensor,
        layer: int,
        n_prompt: torch.Tensor | None,
        tracker: hooking.PositionTracker | None,
    ):
        b, n_query = z.shape[:2]
        device = z.device
        heads = heads.to(device)
        sub = z.index_select(2, heads)
        if self.mode == "zero":
            new = torch.zeros_like(sub)
        else:
            new = self.means[layer].index_select(0, heads.cpu()).to(device, z.dtype)
            new = new[None, None].expand_as(sub)
        if n_prompt is None:
            return z.index_copy(2, heads, new)
        if b != n_prompt.shape[0]:
            raise ValueError(
                f"HeadAblation was applied to {n_prompt.shape[0]} prompt(s) but a forward pass "
                f"has batch size {b}; pass the prompts of the batch, in order, to apply()"
            )
        offset = tracker.offset(layer) if tracker is not None else 0
        absolute = torch.arange(offset, offset + n_query, device=device)
        rows = hooking.query_row_mask(self.positions, absolute, n_prompt.to(device))
        return z.index_copy(2, heads, torch.where(rows[:, :, None, None], new, sub))

    def __repr__(self) -> str:
        return f"HeadAblation({self.heads!r}, mode={self.mode!r}, positions={self.positions!r})"


__all__ = [
    "head_means",
    "HeadAblation",
    "Pasta",
    "split_softmax",
    "SplitSoftmax",
]
