"""Contextual scores: how much attention each head gives to the relevant document.

For one example with attention pattern ``A[l, h, i, j]`` (query ``i``, key ``j``)::

    score(l, h) = mean over query rows i in R of ( sum over keys j in S of A[l, h, i, j] )

with ``S`` the relevant document's tokens (METHOD.md section 2). From the same pass
come the mass on all distractors (summed), on the largest single distractor, on the
attention sink (the first ``sink`` positions) and on everything else; each is averaged
over examples.

Which query rows? (``query=``)
    * ``"response"`` (default, as the authors' code): the response tokens' own
      positions. Excludes the last prompt token, includes the last response token.
    * ``"predict"``: the positions that *predict* the response tokens, one to the left
      (the last prompt token up to the second-to-last response token).
    * ``"last"``: the final prompt token only (no response needed).

Memory: the reduction happens inside each layer's ``hook_pattern`` hook. Only
``[batch, n_heads, n_query_rows, n_spans]`` is kept per layer, never a cache of full
patterns, so the peak memory is that of a plain forward pass. Prompts are padded on the
right, which leaves every real token's attention exactly as in an unbatched pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from focuslens.spans import LabeledPrompt, TokenizedPrompt, tokenize_prompt
from focuslens.typing import HeadTable, PerExampleHeadTable

QueryRows = Literal["response", "predict", "last"]
KINDS = ("relevant", "distractors", "distractor_max", "sink", "other")
"""The score kinds of a :class:`ContextualScores`, in order."""

# Rows of the span-mask tensor built per example: fixed kinds first, then distractors.
_REL, _SINK, _OTHER, _FIRST_DISTRACTOR = 0, 1, 2, 3


@dataclass
class ContextualScores:
    """Per-head attention mass of the query rows, averaged over examples.

    Attributes:
        relevant: ``[n_layers, n_heads]`` mass on the relevant span.
        distractors: ``[n_layers, n_heads]`` mass on all distractor spans together.
        distractor_max: ``[n_layers, n_heads]`` mass on the largest single distractor.
        sink: ``[n_layers, n_heads]`` mass on the first ``sink`` positions.
        other: ``[n_layers, n_heads]`` mass on every other position.
        per_example: kind -> ``[n_examples, n_layers, n_heads]``. ``relevant`` is NaN
            for examples without a relevant span; means skip those.
        query: The query-row convention used.
        n_sink: The number of sink positions.
        meta: Free-form provenance (model name, prompt count, ...).
    """

    relevant: HeadTable
    distractors: HeadTable
    distractor_max: HeadTable
    sink: HeadTable
    other: HeadTable
    per_example: dict[str, PerExampleHeadTable]
    query: str = "response"
    n_sink: int = 2
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.relevant.shape)
        if len(shape) != 2:
            raise ValueError(f"relevant must be [n_layers, n_heads], got shape {shape}")
        for kind in KINDS:
            got = tuple(getattr(self, kind).shape)
            if got != shape:
                raise ValueError(f"{kind} has shape {got}, expected {shape}")
            if kind in self.per_example and tuple(self.per_example[kind].shape[1:]) != shape:
                raise ValueError(
                    f"per_example[{kind!r}] has shape {tuple(self.per_example[kind].shape)}, "
                    f"expected [n_examples, {shape[0]}, {shape[1]}]"
                )

    @classmethod
    def from_per_example(
        cls, per_example: dict[str, torch.Tensor], **kwargs: Any
    ) -> ContextualScores:
        """Average per-example tables (NaN-aware) into a ContextualScores."""
        means = {k: torch.nanmean(per_example[k], dim=0) for k in KINDS}
        return cls(**means, per_example=per_example, **kwargs)

    @property
    def n_layers(self) -> int:
        return int(self.relevant.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.relevant.shape[1])

    @property
    def n_examples(self) -> int:
        return int(self.per_example["relevant"].shape[0])

    def __getitem__(self, kind: str) -> HeadTable:
        if kind not in KINDS:
            raise KeyError(f"unknown score kind {kind!r}; choose from {KINDS}")
        return getattr(self, kind)

    def top_heads(self, k: int, by: str = "relevant") -> list[tuple[int, int]]:
        """The ``k`` best heads by a score kind, best first.

        Ties are broken by (layer, head), ascending, so the order is deterministic.
        """
        table = self[by]
        n = table.numel()
        if not 0 < k <= n:
            raise ValueError(f"k must be between 1 and {n} (the number of heads), got {k}")
        values = table.detach().float().cpu().flatten().tolist()
        order = sorted(range(n), key=lambda i: (-values[i], i))[:k]
        return [(i // self.n_heads, i % self.n_heads) for i in order]

    def to_dataframe(self) -> Any:
        """Long format: one row per (layer, head, kind) with the mean score."""
        import pandas as pd

        rows = [
            {"layer": layer, "head": head, "kind": kind, "score": float(self[kind][layer, head])}
            for kind in KINDS
            for layer in range(self.n_layers)
            for head in range(self.n_heads)
        ]
        return pd.DataFrame(rows)

    def save(self, path: str | Path) -> None:
        """Save to a safetensors file (tensors) with JSON metadata."""
        tensors = {
            f"per_example.{k}": v.detach().float().cpu().contiguous()
            for k, v in self.per_example.items()
        }
        meta = {
            "query": self.query,
            "n_sink": self.n_sink,
            "meta": self.meta,
            "format": "focuslens.ContextualScores/1",
        }
        save_file(tensors, str(path), metadata={"focuslens": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> ContextualScores:
        """Load what :meth:`save` wrote."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("focuslens")
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ValueError(f"{path} is not a readable ContextualScores file: {exc}") from None
        if header is None:
            raise ValueError(
                f"{path} has no focuslens metadata; was it written by ContextualScores.save?"
            )
        meta = json.loads(header)
        per_example = {
            k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("per_example.")
        }
        missing = [k for k in KINDS if k not in per_example]
        if missing:
            raise ValueError(f"{path} lacks the score kinds {missing}")
        return cls.from_per_example(
            per_example, query=meta["query"], n_sink=meta["n_sink"], meta=meta.get("meta", {})
        )

    def figure(self, kind: str = "relevant", **kwargs: Any) -> Any:
        """A layer x head heatmap of one score kind (a plotly ``go.Figure``)."""
        from focuslens import plots

        return plots.head_scores(self, kind=kind, **kwargs)

    def __repr__(self) -> str:
        top = ", ".join(f"L{l}H{h}" for l, h in self.top_heads(min(5, self.relevant.numel())))
        return (
            f"ContextualScores(n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"n_examples={self.n_examples}, query={self.query!r}, top=[{top}])"
        )


def query_rows(tp: TokenizedPrompt, query: QueryRows) -> list[int]:
    """Token positions of the query rows of one tokenised prompt."""
    if query == "last":
        return [tp.n_prompt - 1]
    if tp.n_response == 0:
        raise ValueError(
            f"prompt {tp.source.text[:60]!r} has no response tokens; query={query!r} needs a "
            "response (or use query='last')"
        )
    if query == "response":
        return list(range(tp.n_prompt, len(tp)))
    if query == "predict":
        return list(range(tp.n_prompt - 1, len(tp) - 1))
    raise ValueError(f"query must be 'response', 'predict' or 'last', got {query!r}")


def span_masks(tp: TokenizedPrompt, n_sink: int, length: int, n_distractors: int) -> torch.Tensor:
    """``[3 + n_distractors, length]`` 0/1 key masks: relevant, sink, other, distractors."""
    masks = torch.zeros(_FIRST_DISTRACTOR + n_distractors, length)
    if tp.relevant is not None:
        masks[_REL, tp.relevant[0] : tp.relevant[1]] = 1
    masks[_SINK, :n_sink] = 1
    for i, (s, e) in enumerate(tp.distractors):
        masks[_FIRST_DISTRACTOR + i, s:e] = 1
    if (masks.sum(0) > 1).any():
        labelled = [("relevant", tp.relevant)] + [
            (f"distractor {i}", s) for i, s in enumerate(tp.distractors)
        ]
        clash = [n for n, s in labelled if s is not None and s[0] < n_sink]
        raise ValueError(
            f"the sink positions [0, {n_sink}) overlap the {', '.join(clash)} span(s) of prompt "
            f"{tp.source.text[:60]!r}; pass a smaller sink (sink=0 disables it) or prepend BOS"
        )
    masks[_OTHER] = 1 - masks.sum(0)
    return masks


def prepare(
    model: Any,
    prompts: Sequence[LabeledPrompt | TokenizedPrompt],
    *,
    query: QueryRows,
    sink: int,
    prepend_bos: bool | None = None,
    require_relevant: bool = True,
) -> list[TokenizedPrompt]:
    """Tokenise and validate prompts for scoring, with errors that name the prompt."""
    if query not in ("response", "predict", "last"):
        raise ValueError(f"query must be 'response', 'predict' or 'last', got {query!r}")
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be a non-negative int, got {sink!r}")
    if isinstance(prompts, LabeledPrompt):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    n_ctx = model.cfg.n_ctx
    out = []
    for idx, prompt in enumerate(prompts):
        if not isinstance(prompt, (LabeledPrompt, TokenizedPrompt)):
            raise TypeError(
                f"prompt {idx} is a {type(prompt).__name__}, expected a LabeledPrompt "
                "(or a TokenizedPrompt)"
            )
        try:
            if require_relevant and prompt.relevant is None:
                raise ValueError(
                    "it has no relevant span (relevant=None); contextual scores need one "
                    "(pass require_relevant=False to score its other spans only)"
                )
            if isinstance(prompt, TokenizedPrompt):
                tp = prompt  # exact token ids, e.g. a generated answer
                if query != "last" and tp.n_response == 0:
                    raise ValueError(f"query={query!r} needs response tokens; it has none")
            else:
                tp = tokenize_prompt(
                    model, prompt, prepend_bos=prepend_bos, require_response=query != "last"
                )
            if len(tp) > n_ctx:
                raise ValueError(
                    f"it has {len(tp)} tokens, more than the model's context n_ctx={n_ctx}"
                )
            query_rows(tp, query)
            span_masks(tp, sink, len(tp), len(tp.distractors))  # the sink must not overlap a span
        except ValueError as exc:
            raise ValueError(f"prompt {idx}: {exc}") from None
        out.append(tp)
    return out


def _batch_inputs(batch: list[TokenizedPrompt], query: QueryRows, sink: int, pad_id: int):
    length = max(len(tp) for tp in batch)
    n_dis = max((len(tp.distractors) for tp in batch), default=0)
    tokens = torch.full((len(batch), length), pad_id, dtype=torch.long)
    rows_list = [query_rows(tp, query) for tp in batch]
    n_rows = max(len(r) for r in rows_list)
    rows = torch.zeros(len(batch), n_rows, dtype=torch.long)
    row_mask = torch.zeros(len(batch), n_rows)
    masks = torch.zeros(len(batch), _FIRST_DISTRACTOR + n_dis, length)
    for b, tp in enumerate(batch):
        tokens[b, : len(tp)] = tp.tokens
        rows[b, : len(rows_list[b])] = torch.tensor(rows_list[b])
        row_mask[b, : len(rows_list[b])] = 1
        masks[b] = span_masks(tp, sink, length, n_dis)
        masks[b, :, len(tp) :] = 0
    return tokens, rows, row_mask, masks


def span_mass(
    pattern: torch.Tensor, rows: torch.Tensor, row_mask: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Mean over query rows of the attention mass on each key mask.

    Args:
        pattern: ``[batch, head_index, query_pos, key_pos]`` attention probabilities.
        rows: ``[batch, n_rows]`` query positions to read (padded rows are masked).
        row_mask: ``[batch, n_rows]`` 1 for real rows.
        masks: ``[batch, n_masks, key_pos]`` 0/1 key masks.

    Returns:
        ``[batch, head_index, n_masks]`` float32.
    """
    b, h, _, k = pattern.shape
    index = rows[:, None, :, None].to(pattern.device).expand(b, h, rows.shape[1], k)
    selected = pattern.gather(2, index).float()
    mass = torch.einsum("bhrk,bsk->bhrs", selected, masks.to(selected.device))
    weights = row_mask.to(selected.device)
    return (mass * weights[:, None, :, None]).sum(2) / weights.sum(1)[:, None, None]


def _reduce(raw: torch.Tensor, tps: list[TokenizedPrompt]) -> dict[str, torch.Tensor]:
    """``[n_examples, n_layers, n_heads, n_masks]`` masses -> per-example kind tables."""
    n_dis = raw.shape[-1] - _FIRST_DISTRACTOR
    dis = raw[..., _FIRST_DISTRACTOR:]
    has_rel = torch.tensor([tp.relevant is not None for tp in tps])[:, None, None]
    return {
        "relevant": torch.where(has_rel, raw[..., _REL], torch.nan),
        "distractors": dis.sum(-1) if n_dis else torch.zeros_like(raw[..., _REL]),
        "distractor_max": dis.amax(-1) if n_dis else torch.zeros_like(raw[..., _REL]),
        "sink": raw[..., _SINK],
        "other": raw[..., _OTHER],
    }


def _reduce_hook(pattern: torch.Tensor, hook: Any, *, out: dict, layer: int, args: tuple) -> None:
    out[layer] = span_mass(pattern, *args).cpu()


def contextual_scores(
    model: Any,
    prompts: Sequence[LabeledPrompt],
    *,
    query: QueryRows = "response",
    sink: int = 2,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    require_relevant: bool = True,
    progress: bool = False,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
) -> ContextualScores:
    """Attention mass of each head on the relevant span, distractors and sink.

    Args:
        model: A ``HookedTransformer`` (or a ``TransformerBridge`` in compatibility mode).
        prompts: Labelled prompts; with ``query="response"`` or ``"predict"`` each needs a
            ``response``. A :class:`~focuslens.spans.TokenizedPrompt` is scored on its
            own token ids (e.g. a prompt followed by the exact tokens a model generated,
            which re-tokenising the decoded text need not reproduce).
        query: Which query rows to average over (see the module docstring).
        sink: Number of leading positions counted as the attention sink.
        batch_size: Prompts per forward pass (right-padded; results do not depend on it).
        prepend_bos: Override the model's ``default_prepend_bos``.
        require_relevant: Refuse prompts without a relevant span (default). When False,
            their ``relevant`` score is NaN and means skip them.
        progress: Show a progress bar over batches.
        chunk_size: For long prompts: run each prompt alone in chunks of this many tokens
            through the KV cache (:func:`focuslens.longctx.chunked_contextual_scores`), so
            no layer holds more than ``chunk_size x n`` attention scores. Same numbers;
            ``batch_size`` does not apply. ``None`` (default): one pass per batch.
        max_memory: Instead of ``chunk_size``: a memory budget (bytes or ``"8GiB"``) from
            which the chunk size is picked.

    Returns:
        :class:`ContextualScores`, each table ``[n_layers, n_heads]``.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompts = focuslens.tasks.synthetic_retrieval(8, n_documents=8, seed=0)
        >>> scores = focuslens.contextual_scores(model, prompts)
        >>> scores.relevant.shape == (model.cfg.n_layers, model.cfg.n_heads)
        True
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_size is not None or max_memory is not None:
        from focuslens.longctx import chunked_contextual_scores

        return chunked_contextual_scores(
            model,
            prompts,
            chunk_size=chunk_size,
            max_memory=max_memory,
            query=query,
            sink=sink,
            prepend_bos=prepend_bos,
            require_relevant=require_relevant,
            progress=progress,
        )
    tps = prepare(
        model,
        prompts,
        query=query,
        sink=sink,
        prepend_bos=prepend_bos,
        require_relevant=require_relevant,
    )
    n_layers = model.cfg.n_layers
    tokenizer = model.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    n_dis_all = max((len(tp.distractors) for tp in tps), default=0)
    results = []
    starts = range(0, len(tps), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="contextual scores", unit="batch")
    for start in starts:
        batch = tps[start : start + batch_size]
        tokens, rows, row_mask, masks = _batch_inputs(batch, query, sink, pad_id)
        per_layer: dict[int, torch.Tensor] = {}

        fwd_hooks = [
            (
                f"blocks.{layer}.attn.hook_pattern",
                partial(_reduce_hook, out=per_layer, layer=layer, args=(rows, row_mask, masks)),
            )
            for layer in range(n_layers)
        ]
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            model(tokens.to(device), return_type=None)
        if sorted(per_layer) != list(range(n_layers)):
            raise RuntimeError(
                f"hook_pattern fired for layers {sorted(per_layer)}, expected 0..{n_layers - 1}; "
                "this backend does not expose attention patterns the way focuslens expects"
            )
        raw = torch.stack([per_layer[layer] for layer in range(n_layers)], dim=1)
        pad = _FIRST_DISTRACTOR + n_dis_all - raw.shape[-1]
        results.append(torch.nn.functional.pad(raw, (0, pad)))
    per_example = _reduce(torch.cat(results), tps)
    meta = {"model": getattr(model.cfg, "model_name", None), "n_examples": len(tps)}
    return ContextualScores.from_per_example(per_example, query=query, n_sink=sink, meta=meta)


__all__ = [
    "KINDS",
    "ContextualScores",
    "contextual_scores",
    "prepare",
    "query_rows",
    "span_mass",
    "span_masks",
]
