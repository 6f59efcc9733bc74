"""Activation patching between paired runs: which heads carry what the clean prompt has
and the distracted one lacks?

For each head, :func:`patch_heads` takes its output (``hook_z``) at the answer rows from a
*source* run and writes it into the distracted run, and measures how the answer's
log-probability changes (``metric="prob"``: its probability). The source is by default
the prompt's gold-only variant (the relevant document alone, no distractors), so a head
whose patched output restores the answer is one whose distraction costs the answer.

The answer rows are the rows that predict the gold answer (teacher-forced after the
prompt, as in :mod:`focuslens.interventions.effects`): the last prompt token and every
answer token but the last. The source run reads the same answer tokens after its own
prompt, so its answer rows pair with the distracted run's in order, whatever the two
prompts' lengths.

* :func:`patch_heads`: every head (or a list) patched alone; ``per_position=True`` also
  patches each head at one answer row at a time.
* :func:`joint_patch_effect`: a whole head set patched at once ("do the top-k contextual
  heads together carry the gold-only behaviour?").

Positive effects mean the source run's output of the head helps the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from focuslens.heads import HeadSet
from focuslens.interventions.effects import (
    HeadEffects,
    _batches,
    _heads_or_all,
    _logprob,
    answer_prompts,
)
from focuslens.interventions.zpatch import patching, record_z
from focuslens.model.loading import ensure_backend
from focuslens.prompts.batch import PromptBatch, batches, pad_token_id
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.typing import Model

SOURCES = ("gold_only", "distractors_only")
"""Named sources: variants of each prompt."""

METRICS = ("logprob", "prob")
"""Accepted values of ``metric``."""


def _sources(prompts: list[LabeledPrompt], source: Any) -> tuple[list[LabeledPrompt], str]:
    """The source prompt of each prompt, with the prompt's answers, and the mode label."""
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(
                f"source must be one of {SOURCES} or a list of paired prompts, got {source!r}"
            )
        out = []
        for i, p in enumerate(prompts):
            if not p.has_variants:
                raise ValueError(
                    f"prompt {i} was not built from documents, so it has no {source} variant; "
                    "pass source=[paired prompts]"
                )
            try:
                out.append(getattr(p, source)())
            except ValueError as exc:
                raise ValueError(f"prompt {i}: {exc}") from None
        return out, source
    paired = [source] if isinstance(source, LabeledPrompt) else list(source)
    if len(paired) != len(prompts):
        raise ValueError(f"{len(paired)} source prompts for {len(prompts)} prompts; pair them")
    for i, p in enumerate(paired):
        if not isinstance(p, LabeledPrompt):
            raise TypeError(f"source {i} is a {type(p).__name__}, expected a LabeledPrompt")
    # The source reads the distracted prompt's answer, so the answer rows pair up.
    return [replace(s, answers=p.answers) for s, p in zip(paired, prompts)], "paired"


def _setup(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    source: Any,
    metric: str,
    target: str,
    answer_prefix: str,
) -> tuple[list[TokenizedPrompt], list[TokenizedPrompt], str]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    ensure_backend(model, ("hook_z",))
    prompts = [prompts] if isinstance(prompts, LabeledPrompt) else list(prompts)
    tps = answer_prompts(model, prompts, target=target, answer_prefix=answer_prefix)
    sources, mode = _sources(prompts, source)
    if target == "response":
        sources = [s.with_response(p.response) for s, p in zip(sources, prompts)]
    src = answer_prompts(model, sources, target=target, answer_prefix=answer_prefix)
    for i, (a, b) in enumerate(zip(tps, src)):
        if not torch.equal(a.tokens[a.n_prompt :], b.tokens[b.n_prompt :]):
            raise ValueError(
                f"prompt {i}: the source run's answer tokens differ from the prompt's; "
                "patching pairs the answer rows, so both must read the same answer"
            )
    return tps, src, mode


def _source_rows(
    model: Model, src: list[TokenizedPrompt], layers: Iterable[int]
) -> tuple[dict[int, Tensor], Tensor]:
    """``hook_z`` of the source run at its answer rows, and its metric per prompt."""
    batch = next(iter(batches(src, len(src), pad_token_id(model))))[1]
    rows, _ = batch.rows("predict")
    with torch.no_grad():
        values = _logprob(model, batch).cpu()
    return record_z(model, batch.tokens, rows, layers), values


def _metric(logp: Tensor, metric: str) -> Tensor:
    return logp.exp() if metric == "prob" else logp


def patch_heads(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    *,
    source: str | Sequence[LabeledPrompt] = "gold_only",
    metric: str = "logprob",
    heads: Any = None,
    per_position: bool = False,
    target: str = "answer",
    answer_prefix: str = " ",
    batch_size: int = 8,
) -> HeadEffects:
    """Effect of patching each head's output from a source run into the distracted run.

    Args:
        model: A ``HookedTransformer``.
        prompts: Labelled prompts with gold answers (the distracted runs).
        source: ``"gold_only"`` (default), ``"distractors_only"``, or one paired prompt
            per prompt (read with the prompt's own answer).
        metric: ``"logprob"`` (default) or ``"prob"`` of the answer.
        heads: The heads to patch (each alone); default every head. Others are NaN.
        per_position: Also patch each head at one answer row at a time
            (``HeadEffects.per_position``).
        target: ``"answer"`` or ``"response"`` (see :mod:`focuslens.interventions.effects`).
        answer_prefix: Put before ``answers[0]`` when ``target="answer"``.
        batch_size: Prompts per forward pass (results do not depend on it).

    Returns:
        :class:`~focuslens.HeadEffects` with ``method="patching"``, ``baseline`` the
        distracted runs' metric and ``reference`` the source runs'.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(2, n_documents=12, seed=0)
        >>> effects = focuslens.patch_heads(model, prompts, heads=[(2, 3)])
        >>> effects.values.shape == (model.cfg.n_layers, model.cfg.n_heads)
        True
    """
    chosen = _heads_or_all(model, heads)
    if not isinstance(per_position, bool):
        raise ValueError(f"per_position must be True or False, got {per_position!r}")
    tps, src, mode = _setup(model, prompts, source, metric, target, answer_prefix)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    effects = torch.full((len(tps), n_layers, n_heads), float("nan"))
    n_rows = max(tp.n_response for tp in tps)
    by_row = torch.full((len(tps), n_rows, n_layers, n_heads), float("nan"))
    baseline, reference = torch.zeros(len(tps)), torch.zeros(len(tps))
    layers = sorted({layer for layer, _ in chosen})
    with torch.no_grad():
        for index, batch in _batches(model, tps, batch_size):
            z, ref = _source_rows(model, src[index], layers)
            rows, mask = batch.rows("predict")
            clean = _logprob(model, batch).cpu()
            baseline[index] = _metric(clean, metric)
            reference[index] = _metric(ref, metric)
            for layer, head in chosen:
                effects[index, layer, head] = _patched(
                    model, batch, [(layer, head)], z, rows, mask, clean, metric
                )
                if per_position:
                    for r in range(rows.shape[1]):
                        one = torch.zeros_like(mask)
                        one[:, r] = mask[:, r]
                        got = _patched(model, batch, [(layer, head)], z, rows, one, clean, metric)
                        by_row[index, r, layer, head] = torch.where(
                            mask[:, r].bool(), got, torch.nan
                        )
    return HeadEffects(
        values=effects.mean(0),
        per_example=effects,
        baseline=baseline,
        mode=mode,
        method="patching",
        positions="answer",
        reference=reference,
        per_position=by_row if per_position else None,
        metric=metric,
        meta={"model": getattr(model.cfg, "model_name", None), "n_examples": len(tps)},
    )


def _patched(
    model: Model,
    batch: PromptBatch,
    heads: Any,
    z: dict[int, Tensor],
    rows: Tensor,
    mask: Tensor,
    clean: Tensor,
    metric: str,
) -> Tensor:
    with patching(model, heads, z, rows, mask):
        logp = _logprob(model, batch).cpu()
    return _metric(logp, metric) - _metric(clean, metric)


def joint_patch_effect(
    model: Model,
    prompts: Iterable[LabeledPrompt],
    heads: Any,
    *,
    source: str | Sequence[LabeledPrompt] = "gold_only",
    metric: str = "logprob",
    target: str = "answer",
    answer_prefix: str = " ",
    batch_size: int = 8,
) -> Float[Tensor, " n_examples"]:
    """Change of the metric per example when all ``heads`` are patched together from the
    source run (arguments as in :func:`patch_heads`)."""
    chosen = HeadSet(heads).validate(model)
    if not chosen:
        raise ValueError("heads is empty; give at least one (layer, head)")
    tps, src, _ = _setup(model, prompts, source, metric, target, answer_prefix)
    layers = sorted({layer for layer, _ in chosen})
    out = []
    with torch.no_grad():
        for index, batch in _batches(model, tps, batch_size):
            z, _ = _source_rows(model, src[index], layers)
            rows, mask = batch.rows("predict")
            clean = _logprob(model, batch).cpu()
            out.append(_patched(model, batch, chosen, z, rows, mask, clean, metric))
    return torch.cat(out)


__all__ = ["METRICS", "SOURCES", "joint_patch_effect", "patch_heads"]
