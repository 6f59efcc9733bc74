"""Do these heads matter for the answer? Ablation and attribution patching per head.

The quantity is the log-probability of the gold answer, teacher-forced after the
prompt: ``log p(answer | prompt) = sum over answer tokens t of log p(y_t | prompt, y_<t)``.
A head's *effect* is how much that log-probability changes when the head's output
(``hook_z``, its mix of values before ``W_O``) is replaced, at every position of the
prompt and the answer (or only some, ``positions=``):

* zero-ablation (``mode="zero"``): by zero;
* mean-ablation (``mode="mean"``): by its mean over reference prompts
  (:func:`focuslens.interventions.head_means`; by default the prompts themselves), which
  keeps the head's average contribution and removes only what depends on the input;
* resample-ablation (``mode="resample"``): by its output, position by position, on
  another prompt of the same length (a *donor*), which keeps the head's output on the
  distribution of real inputs (Chan et al. 2022). By default each prompt's donor is the
  next prompt of the same token length (cyclically, among the prompts given); or pass
  ``donors=``, one prompt per prompt.

Negative effects mean the head helps the answer.

Which one should you use?

* :func:`ablation_effects` runs one forward pass per head (and batch): exact, but
  ``n_layers * n_heads`` passes. Use it for a model with few heads or for a short list.
* :func:`attribution_patching` estimates every head's effect from one forward and one
  backward pass, by the first-order Taylor expansion (Nanda 2023; Syed et al. 2023)::

      effect(l, h) ~ sum over positions p of  dlogp/dz[p, l, h] . (z_ref[l, h] - z[p, l, h])

  It is exact for a head whose removal changes the answer's log-probability linearly,
  and only a ranking aid otherwise: check it against :func:`ablation_effects` on a few
  heads (:func:`focuslens.heads.rank_correlation`).
* :func:`joint_ablation_effect` ablates a whole head set at once: "do the top-k
  contextual heads matter together?"

The answer: ``target="answer"`` (default) uses ``answer_prefix + prompt.answers[0]``
(the prefix ``" "`` suits tokenizers that keep the space before a word, such as GPT-2's,
and is dropped by whitespace-splitting tokenizers), ``target="response"`` the prompt's
``response`` (for the synthetic task, the answer and its end marker).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from focuslens.heads import HeadScores, HeadSet
from focuslens.interventions.oracles import HeadAblation, head_means
from focuslens.interventions.zpatch import patching, record_z
from focuslens.model import hooks as hooking
from focuslens.model.hooks import layer_hooks
from focuslens.model.loading import ensure_backend
from focuslens.prompts.batch import PromptBatch, batches, pad_token_id
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt, tokenize_prompt
from focuslens.typing import Model


@dataclass
class HeadEffects(HeadScores):
    """Per-head change of the gold answer's log-probability (ablated minus clean).

    Attributes:
        values: ``[n_layers, n_heads]`` mean effect over examples (NaN: head not measured).
        per_example: ``[n_examples, n_layers, n_heads]`` effects.
        name: ``"effect"`` (the value column of ``to_dataframe()``).
        baseline: ``[n_examples]`` clean log-probability of each gold answer (for
            patching: on the prompts patched into).
        mode: ``"zero"``, ``"mean"`` or ``"resample"`` for ablations; for patching, the
            source run: ``"gold_only"``, ``"distractors_only"`` or ``"paired"``.
        method: ``"ablation"`` (exact), ``"attribution"`` (first-order estimate) or
            ``"patching"`` (exact, from a source run).
        positions: Query positions acted on: ``"all"``, ``"prompt"`` or ``"generated"``;
            for patching ``"answer"`` (the rows that predict the answer).
        reference: For patching, ``[n_examples]`` the metric on the source run.
        per_position: For patching with ``per_position=True``, ``[n_examples, n_rows,
            n_layers, n_heads]`` effects of patching one row at a time (NaN past an
            example's rows).
        metric: What changes: ``"logprob"`` (default) or ``"prob"`` of the answer.
    """

    name: str = "effect"
    baseline: Tensor | None = None
    mode: str = "zero"
    method: str = "ablation"
    positions: str = "all"
    reference: Tensor | None = None
    per_position: Tensor | None = None
    metric: str = "logprob"

    def figure(self, *, top_k: int = 5, title: str | None = None, ci: float | None = None) -> Any:
        """Red-blue layer x head heatmap of the effects (:func:`focuslens.plots.head_effects`);
        ``ci=0.95`` puts each head's bootstrap interval (:meth:`ci`) in its hover text."""
        from focuslens import plots

        what = "log p(answer)" if self.metric == "logprob" else "p(answer)"
        return plots.head_effects(
            self.values,
            top_k=top_k,
            label=f"change in {what}",
            title=title or f"{self.mode}-{self.method} effect of each head on {what}",
            ci=None if ci is None else self.ci(ci),
        )

    def __repr__(self) -> str:
        n = "?" if self.per_example is None else self.per_example.shape[0]
        return (
            f"HeadEffects(method={self.method!r}, mode={self.mode!r}, n_examples={n}, "
            f"shape={tuple(self.values.shape)})"
        )


# ------------------------------------------------------------------ answer log-prob
def answer_prompts(
    model: Model,
    prompts: Iterable[LabeledPrompt] | LabeledPrompt,
    *,
    target: str = "answer",
    answer_prefix: str = " ",
) -> list[TokenizedPrompt]:
    """Tokenise each prompt followed by its gold answer (the teacher-forced target)."""
    prompts = [prompts] if isinstance(prompts, LabeledPrompt) else list(prompts)
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    if target not in ("answer", "response"):
        raise ValueError(f"target must be 'answer' or 'response', got {target!r}")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, LabeledPrompt):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, expected a LabeledPrompt")
        if target == "answer":
            if not p.answers or not p.answers[0]:
                raise ValueError(f"prompt {i} has no gold answer (answers={p.answers!r})")
            p = p.with_response(answer_prefix + p.answers[0])
        elif not p.response:
            raise ValueError(f"prompt {i} has no response; target='response' needs one")
        try:
            tp = tokenize_prompt(model, p)
        except ValueError as exc:
            raise ValueError(f"prompt {i}: {exc}") from None
        if tp.n_response == 0:
            raise ValueError(f"prompt {i}: its target {p.response!r} has no tokens")
        if len(tp) > model.cfg.n_ctx:
            raise ValueError(
                f"prompt {i} has {len(tp)} tokens with its answer, more than n_ctx="
                f"{model.cfg.n_ctx}"
            )
        out.append(tp)
    return out


def _logprob(model: Model, batch: PromptBatch) -> Float[Tensor, " batch"]:
    """Sum of the answer tokens' log-probabilities, one per prompt of the batch."""
    device = next(model.parameters()).device
    logits = model(batch.tokens.to(device))
    rows, row_mask = (t.to(logits.device) for t in batch.rows("predict"))
    picked = logits.gather(1, rows[:, :, None].expand(-1, -1, logits.shape[-1]))
    logp = picked.float().log_softmax(-1)
    token_logp = logp.gather(2, batch.targets().to(logits.device)[:, :, None])[..., 0]
    return (token_logp * row_mask).sum(1)


def _batches(
    model: Model, tps: list[TokenizedPrompt], batch_size: int
) -> Iterator[tuple[slice, PromptBatch]]:
    return batches(tps, batch_size, pad_token_id(model))


def answer_logprob(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    target: str = "answer",
    answer_prefix: str = " ",
    batch_size: int = 8,
) -> Float[Tensor, " n_examples"]:
    """``log p(answer | prompt)`` of each prompt, teacher-forced (see the module docstring).

    Works under an intervention too: ``with SplitSoftmax(...).apply(model, tps): ...``
    where ``tps = answer_prompts(model, prompts)`` (and ``batch_size >= len(tps)``).
    """
    tps = answer_prompts(model, prompts, target=target, answer_prefix=answer_prefix)
    with torch.no_grad():
        return torch.cat([_logprob(model, b).cpu() for _, b in _batches(model, tps, batch_size)])


# -------------------------------------------------------------------------- ablation
def _heads_or_all(model: Model, heads: Any) -> HeadSet:
    ensure_backend(model, ("hook_z",))
    if heads is None:
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        return HeadSet((l, h) for l in range(n_layers) for h in range(n_heads))
    return HeadSet(heads).validate(model)


ABLATION_MODES = ("zero", "mean", "resample")
"""Accepted values of ``mode`` in the ablation functions."""


def _means(model: Model, mode: str, means: Tensor | None, tps: list[TokenizedPrompt]):
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be one of {ABLATION_MODES}, got {mode!r}")
    if mode != "mean":
        return None
    if means is None:
        return head_means(model, tps)
    want = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    if tuple(means.shape) != want:
        raise ValueError(
            f"means has shape {tuple(means.shape)}, expected [n_layers, n_heads, d_head] = "
            f"{list(want)} for this model"
        )
    return means


def _donors(
    model: Model,
    tps: list[TokenizedPrompt],
    donors: Iterable[LabeledPrompt] | None,
    target: str,
    answer_prefix: str,
) -> list[TokenizedPrompt]:
    """One donor per prompt, of the same token length (module docstring)."""
    if donors is not None:
        out = answer_prompts(model, donors, target=target, answer_prefix=answer_prefix)
        if len(out) != len(tps):
            raise ValueError(f"{len(out)} donors for {len(tps)} prompts; give one per prompt")
    else:
        groups: dict[int, list[int]] = {}
        for i, tp in enumerate(tps):
            groups.setdefault(len(tp), []).append(i)
        out = [tps[0]] * len(tps)
        for length, members in groups.items():
            if len(members) == 1:
                raise ValueError(
                    f"prompt {members[0]} has {length} tokens with its answer and no other "
                    "prompt has as many; resample ablation takes each head's output from "
                    "another prompt of the same length (give more such prompts, or donors=)"
                )
            for j, i in enumerate(members):
                out[i] = tps[members[(j + 1) % len(members)]]
    for i, (tp, donor) in enumerate(zip(tps, out)):
        if len(donor) != len(tp):
            raise ValueError(
                f"donor {i} has {len(donor)} tokens with its answer, prompt {i} has {len(tp)}; "
                "resample ablation needs a donor of the same length"
            )
    return out


def _resampled(
    model: Model,
    batch: PromptBatch,
    donors: list[TokenizedPrompt],
    positions: str,
    layers: Iterable[int],
) -> tuple[dict[int, Tensor], Tensor, Tensor]:
    """The donors' ``hook_z`` at every position, and the rows to replace."""
    donor = next(iter(batches(donors, len(donors), pad_token_id(model))))[1]
    length = batch.tokens.shape[1]
    rows = torch.arange(length)[None].expand(batch.size, -1)
    row_mask = hooking.query_row_mask(positions, torch.arange(length), batch.n_prompt)
    row_mask = row_mask.expand(batch.size, -1) & batch.real.bool()
    return record_z(model, donor.tokens, rows, layers), rows, row_mask


def ablation_effects(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    heads: Any = None,
    mode: str = "zero",
    means: Tensor | None = None,
    donors: Iterable[LabeledPrompt] | None = None,
    positions: str = "all",
    target: str = "answer",
    answer_prefix: str = " ",
    batch_size: int = 8,
) -> HeadEffects:
    """Exact effect of ablating each head, one at a time, on ``log p(answer)``.

    Args:
        model: A ``HookedTransformer``.
        prompts: Labelled prompts with gold answers.
        heads: The heads to ablate (each alone); default every head. Other heads are NaN.
        mode: ``"zero"``, ``"mean"`` or ``"resample"`` ablation of the head's ``hook_z``.
        means: ``[n_layers, n_heads, d_head]`` reference for ``mode="mean"``; default the
            mean over every token of ``prompts`` with their answers.
        donors: For ``mode="resample"``, one prompt per prompt, of the same token length
            with its answer; default the next prompt of the same length.
        positions: Query positions ablated: ``"all"``, ``"prompt"`` or ``"generated"``.
        target: ``"answer"`` or ``"response"`` (see the module docstring).
        answer_prefix: Put before ``answers[0]`` when ``target="answer"``.
        batch_size: Prompts per forward pass (right padded; results do not depend on it).

    Returns:
        :class:`HeadEffects` with ``[n_layers, n_heads]`` tables.
    """
    chosen = _heads_or_all(model, heads)
    hooking.check_positions(positions)
    tps = answer_prompts(model, prompts, target=target, answer_prefix=answer_prefix)
    means = _means(model, mode, means, tps)
    donor_tps = _donors(model, tps, donors, target, answer_prefix) if mode == "resample" else None
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    effects = torch.full((len(tps), n_layers, n_heads), float("nan"))
    baseline = torch.zeros(len(tps))
    with torch.no_grad():
        for index, batch in _batches(model, tps, batch_size):
            clean = _logprob(model, batch).cpu()
            baseline[index] = clean
            chunk = tps[index]
            if donor_tps is not None:
                layers = {layer for layer, _ in chosen}
                z, rows, mask = _resampled(model, batch, donor_tps[index], positions, layers)
            for layer, head in chosen:
                if donor_tps is not None:
                    context = patching(model, [(layer, head)], z, rows, mask)
                else:
                    ablation = HeadAblation([(layer, head)], mode, means=means, positions=positions)
                    context = ablation.apply(model, chunk)
                with context:
                    effects[index, layer, head] = _logprob(model, batch).cpu() - clean
    return HeadEffects(
        values=effects.mean(0),
        per_example=effects,
        baseline=baseline,
        mode=mode,
        method="ablation",
        positions=positions,
        meta={"model": getattr(model.cfg, "model_name", None), "n_examples": len(tps)},
    )


def joint_ablation_effect(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    heads: Any,
    *,
    mode: str = "zero",
    means: Tensor | None = None,
    donors: Iterable[LabeledPrompt] | None = None,
    positions: str = "all",
    target: str = "answer",
    answer_prefix: str = " ",
    batch_size: int = 8,
) -> Float[Tensor, " n_examples"]:
    """Change of ``log p(answer)`` per example when all ``heads`` are ablated together
    (arguments as in :func:`ablation_effects`)."""
    chosen = HeadSet(heads).validate(model)
    if not chosen:
        raise ValueError("heads is empty; give at least one (layer, head)")
    hooking.check_positions(positions)
    tps = answer_prompts(model, prompts, target=target, answer_prefix=answer_prefix)
    means = _means(model, mode, means, tps)
    donor_tps = _donors(model, tps, donors, target, answer_prefix) if mode == "resample" else None
    out = []
    with torch.no_grad():
        for index, batch in _batches(model, tps, batch_size):
            clean = _logprob(model, batch)
            if donor_tps is not None:
                layers = {layer for layer, _ in chosen}
                z, rows, mask = _resampled(model, batch, donor_tps[index], positions, layers)
                context = patching(model, chosen, z, rows, mask)
            else:
                ablation = HeadAblation(chosen, mode, means=means, positions=positions)
                context = ablation.apply(model, tps[index])
            with context:
                out.append((_logprob(model, batch) - clean).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------- attribution patching
def _record_z(z: Tensor, hook: Any, *, layer: int, zs: dict, deltas: dict) -> Tensor:
    zs[layer] = z.detach()
    deltas[layer] = torch.zeros_like(z, requires_grad=True)
    return z + deltas[layer]


def attribution_patching(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    mode: str = "zero",
    means: Tensor | None = None,
    donors: Iterable[LabeledPrompt] | None = None,
    positions: str = "all",
    target: str = "answer",
    answer_prefix: str = " ",
    batch_size: int = 8,
) -> HeadEffects:
    """First-order estimate of every head's ablation effect from one forward and backward.

    Same arguments and result as :func:`ablation_effects` (``method="attribution"``). The
    gradient is taken with ``torch.autograd.grad`` with respect to a zero tensor added to
    each ``hook_z``, so no parameter's ``.grad`` is touched and frozen models work.
    """
    hooking.check_positions(positions)
    tps = answer_prompts(model, prompts, target=target, answer_prefix=answer_prefix)
    means = _means(model, mode, means, tps)
    donor_tps = _donors(model, tps, donors, target, answer_prefix) if mode == "resample" else None
    n_layers = model.cfg.n_layers
    per_example, baseline = [], []
    for index, batch in _batches(model, tps, batch_size):
        donor_z = None
        if donor_tps is not None:
            donor_z = _resampled(model, batch, donor_tps[index], "all", range(n_layers))[0]
        zs: dict[int, Tensor] = {}
        deltas: dict[int, Tensor] = {}
        fwd = layer_hooks(range(n_layers), "hook_z", partial(_record_z, zs=zs, deltas=deltas))
        with torch.enable_grad(), hooking.hooks(model, fwd):
            logp = _logprob(model, batch)
            grads = torch.autograd.grad(logp.sum(), [deltas[l] for l in range(n_layers)])
        baseline.append(logp.detach().cpu())
        n_pos = batch.tokens.shape[1]
        absolute = torch.arange(n_pos)
        rows = hooking.query_row_mask(positions, absolute, batch.n_prompt) & batch.real.bool()
        layers = []
        for l in range(n_layers):
            z, grad = zs[l].float(), grads[l].float()
            if donor_z is not None:
                ref = donor_z[l].to(z.device, z.dtype)
            elif mode == "zero":
                ref = torch.zeros_like(z)
            else:
                ref = means[l].to(z.device, z.dtype)
            contrib = (grad * (ref - z)).sum(-1)  # [batch, pos, head]
            layers.append((contrib * rows.to(contrib.device)[:, :, None]).sum(1).cpu())
        per_example.append(torch.stack(layers, dim=1))
    effects = torch.cat(per_example)
    return HeadEffects(
        values=effects.mean(0),
        per_example=effects,
        baseline=torch.cat(baseline),
        mode=mode,
        method="attribution",
        positions=positions,
        meta={"model": getattr(model.cfg, "model_name", None), "n_examples": len(tps)},
    )


__all__ = [
    "ABLATION_MODES",
    "ablation_effects",
    "answer_logprob",
    "answer_prompts",
    "attribution_patching",
    "HeadEffects",
    "joint_ablation_effect",
]
