"""Where chosen heads look: the attention of the answer rows of one prompt over its tokens.

:func:`attention_map_data` runs one forward pass of a labelled prompt and keeps, for a
few chosen heads, the attention rows of the *answer* positions (the query rows of
:func:`focuslens.contextual_scores`) over every key position. The result, an
:class:`AttentionMap`, is plain data: per-head ``[n_rows, n_keys]`` tables, the token
strings and the labelled spans. :func:`focuslens.plots.attention_map` draws it.

Memory: the hook keeps only the chosen heads' answer rows (``[n_chosen, n_rows,
n_keys]``), never a full attention cache, so a prompt of thousands of tokens costs a
plain forward pass.

Long prompts: :meth:`AttentionMap.by_segment` sums each row over segments (the sink,
each labelled document in prompt order, all other prompt tokens together, the response)
so that a 48-document prompt becomes ~50 columns instead of ~300 tokens; the token view
can be restricted to a window (:meth:`AttentionMap.window`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from focuslens.heads import HeadSet, str_head, unique_heads
from focuslens.model.hooks import attn_hook, hooks
from focuslens.prompts.batch import query_rows
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.reduce import prepare
from focuslens.typing import Model, Span

FORMAT = "focuslens.AttentionMap/1"

HeadRows = Float[Tensor, "n_chosen n_rows key_pos"]
"""Attention of the answer rows of each chosen head over all key positions."""


@dataclass(frozen=True)
class Segment:
    """A named group of key positions.

    Attributes:
        name: Display name (``"sink"``, ``"doc 3 (relevant)"``, ``"other"``, ``"response"``).
        kind: ``"sink"``, ``"relevant"``, ``"distractor"``, ``"other"`` or ``"response"``.
        positions: The key positions, ascending (not always contiguous for ``"other"``).
    """

    name: str
    kind: str
    positions: tuple[int, ...]


@dataclass
class AttentionMap:
    """Attention of the answer rows of one prompt, for chosen heads.

    Attributes:
        pattern: ``[n_chosen, n_rows, n_keys]`` attention probabilities (float32, CPU);
            keys after a row's own position are 0 (causal).
        heads: The chosen ``(layer, head)`` pairs, in the order of ``pattern``.
        rows: The absolute query positions of the rows.
        tokens: The token strings of all ``n_keys`` positions.
        n_prompt: Number of prompt tokens (BOS included); the response starts here.
        relevant: Token span of the relevant document, or None.
        distractors: Token spans of the distractors.
        n_sink: Number of leading positions counted as the sink.
            (``n_prompt``, ``relevant``, ``distractors`` and ``n_sink`` count from key 0,
            which is absolute position ``offset``.)
        query: The query-row convention (``"response"``, ``"predict"``, ``"last"``).
        row_tokens: The token string at each query row.
        offset: Absolute position of key 0 (non-zero after :meth:`window`).
        meta: Provenance (model name, prompt preview).
    """

    pattern: HeadRows
    heads: list[tuple[int, int]]
    rows: list[int]
    tokens: list[str]
    n_prompt: int
    relevant: Span | None
    distractors: list[Span]
    n_sink: int = 2
    query: str = "response"
    row_tokens: list[str] = field(default_factory=list)
    offset: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.heads), len(self.rows), len(self.tokens))
        if tuple(self.pattern.shape) != shape:
            raise ValueError(
                f"pattern has shape {tuple(self.pattern.shape)}, expected "
                f"[n_chosen, n_rows, n_keys] = {list(shape)}"
            )

    @property
    def n_keys(self) -> int:
        return len(self.tokens)

    def labels(self) -> list[str]:
        """Unique token labels ``"12:the"`` (plotly merges repeated categories)."""
        return [f"{self.offset + i}:{tok}" for i, tok in enumerate(self.tokens)]

    def row_labels(self) -> list[str]:
        """Unique labels of the query rows, ``"40:v9"``."""
        toks = self.row_tokens or ["?"] * len(self.rows)
        return [f"{row}:{tok}" for row, tok in zip(self.rows, toks)]

    def head_names(self) -> list[str]:
        return [str_head(h) for h in self.heads]

    def segments(self) -> list[Segment]:
        """Sink, the labelled documents in prompt order, other prompt tokens, response.

        Documents are numbered 1.. in prompt order; the relevant one is named
        ``"doc i (relevant)"``. Segments with no position are left out.
        """
        docs = [(s, "relevant") for s in [self.relevant] if s is not None]
        docs += [(s, "distractor") for s in self.distractors]
        docs.sort()
        out = []
        if self.n_sink:
            out.append(Segment("sink", "sink", tuple(range(min(self.n_sink, self.n_keys)))))
        labelled = set(out[0].positions) if out else set()
        for i, ((start, end), kind) in enumerate(docs, start=1):
            name = f"doc {i} (relevant)" if kind == "relevant" else f"doc {i}"
            positions = tuple(p for p in range(start, min(end, self.n_keys)) if p not in labelled)
            labelled.update(positions)
            out.append(Segment(name, kind, positions))
        other = tuple(p for p in range(min(self.n_prompt, self.n_keys)) if p not in labelled)
        out.append(Segment("other", "other", other))
        out.append(Segment("response", "response", tuple(range(self.n_prompt, self.n_keys))))
        return [s for s in out if s.positions]

    def by_segment(self) -> tuple[list[Segment], Float[Tensor, "n_chosen n_rows n_segments"]]:
        """The attention mass of each row on each segment (rows of the result sum to 1)."""
        segments = self.segments()
        mask = torch.zeros(self.n_keys, len(segments))
        for j, seg in enumerate(segments):
            mask[list(seg.positions), j] = 1.0
        return segments, torch.einsum("hrk,ks->hrs", self.pattern, mask)

    def window(self, start: int, end: int) -> AttentionMap:
        """The same map restricted to key positions ``[start, end)`` (spans clipped).

        Positions are absolute (as in :attr:`rows`); labels keep them.
        """
        lo, hi = self.offset, self.offset + self.n_keys
        if not lo <= start < end <= hi:
            raise ValueError(f"window ({start}, {end}) must satisfy {lo} <= start < end <= {hi}")
        start, end = start - lo, end - lo

        def clip(span: Span | None) -> Span | None:
            if span is None or span[1] <= start or span[0] >= end:
                return None
            return max(span[0], start) - start, min(span[1], end) - start

        return AttentionMap(
            pattern=self.pattern[:, :, start:end].clone(),
            heads=list(self.heads),
            rows=list(self.rows),
            tokens=list(self.tokens[start:end]),
            n_prompt=min(max(self.n_prompt - start, 0), end - start),
            relevant=clip(self.relevant),
            distractors=[c for c in map(clip, self.distractors) if c is not None],
            n_sink=max(0, min(self.n_sink, end) - start),
            query=self.query,
            row_tokens=list(self.row_tokens),
            offset=self.offset + start,
            meta=dict(self.meta),
        )

    def to_dataframe(self) -> Any:
        """Long format: head, row (query position), key, token, segment, attention."""
        import pandas as pd

        seg_of = {p: s.name for s in self.segments() for p in s.positions}
        names = self.head_names()
        rows = [
            {
                "head": names[h],
                "row": row,
                "key": self.offset + k,
                "token": self.tokens[k],
                "segment": seg_of.get(k, "other"),
                "attention": float(self.pattern[h, r, k]),
            }
            for h in range(len(self.heads))
            for r, row in enumerate(self.rows)
            for k in range(self.n_keys)
        ]
        return pd.DataFrame(rows)

    def save(self, path: str | Path) -> None:
        """Save to a safetensors file (the pattern) with JSON metadata (the rest)."""
        from safetensors.torch import save_file

        meta = {
            "format": FORMAT,
            "heads": [list(h) for h in self.heads],
            "rows": self.rows,
            "tokens": self.tokens,
            "n_prompt": self.n_prompt,
            "relevant": None if self.relevant is None else list(self.relevant),
            "distractors": [list(s) for s in self.distractors],
            "n_sink": self.n_sink,
            "query": self.query,
            "row_tokens": self.row_tokens,
            "offset": self.offset,
            "meta": self.meta,
        }
        tensors = {"pattern": self.pattern.detach().float().cpu().contiguous()}
        save_file(tensors, str(path), metadata={"focuslens": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> AttentionMap:
        """Load what :meth:`save` wrote."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("focuslens")
                pattern = f.get_tensor("pattern")
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ValueError(f"{path} is not a readable AttentionMap file: {exc}") from None
        meta = json.loads(header) if header else {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        return cls(
            pattern=pattern,
            heads=[tuple(h) for h in meta["heads"]],
            rows=meta["rows"],
            tokens=meta["tokens"],
            n_prompt=meta["n_prompt"],
            relevant=None if meta["relevant"] is None else tuple(meta["relevant"]),
            distractors=[tuple(s) for s in meta["distractors"]],
            n_sink=meta["n_sink"],
            query=meta["query"],
            row_tokens=meta["row_tokens"],
            offset=meta["offset"],
            meta=meta["meta"],
        )

    def figure(self, **kwargs: Any) -> Any:
        """The plotly figure of :func:`focuslens.plots.attention_figure`."""
        from focuslens import plots

        return plots.attention_figure(self, **kwargs)

    def _repr_html_(self) -> str:
        """A notebook card: mass by document per head (:mod:`focuslens.plots.notebook`)."""
        from focuslens.plots import notebook

        return notebook.attention_map_html(self)

    def __repr__(self) -> str:
        return (
            f"AttentionMap(heads=[{', '.join(self.head_names())}], rows={len(self.rows)}, "
            f"keys={self.n_keys}, query={self.query!r})"
        )


def _token_strings(model: Model, tokens: Tensor) -> list[str]:
    tokenizer = model.tokenizer
    return [tokenizer.decode([int(t)]) for t in tokens.tolist()]


def _keep_rows(pattern: Tensor, hook: Any, *, out: dict, layer: int, heads: list, rows: list):
    out[layer] = pattern[0, heads][:, rows, :].detach().float().cpu()


def attention_map_data(
    model: Model,
    prompt: LabeledPrompt,
    heads: HeadSet | Iterable[Any],
    *,
    query: str | None = None,
    sink: int = 2,
    prepend_bos: bool | None = None,
) -> AttentionMap:
    """Measure the attention of a prompt's answer rows for chosen heads (one forward pass).

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompt: A labelled prompt. Its response tokens are the answer rows.
        heads: ``(layer, head)`` pairs (or ``"L1H0"`` strings, or a HeadSet), kept in
            the order given (duplicates dropped).
        query: Which rows: ``"response"`` (default when the prompt has a response),
            ``"predict"`` or ``"last"`` (default without a response); see
            :mod:`focuslens.scores`.
        sink: Leading positions counted as the attention sink.
        prepend_bos: Override the model's ``default_prepend_bos``.

    Returns:
        An :class:`AttentionMap` with ``pattern[i]`` the rows of ``heads[i]``.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> p = focuslens.tasks.synthetic_retrieval(1, n_documents=4)[0]
        >>> amap = attention_map_data(model, p, [(1, 0)])
        >>> amap.pattern.shape[1] == len(amap.rows)
        True
    """
    chosen = unique_heads(model, heads)
    if query is None:
        query = "response" if prompt.response else "last"
    tp = prepare(
        model, [prompt], query=query, sink=sink, prepend_bos=prepend_bos, require_relevant=False
    )[0]
    rows = query_rows(tp, query)
    n_keys = max(rows) + 1
    by_layer = HeadSet(chosen).by_layer()
    out: dict[int, Tensor] = {}
    fwd_hooks = [
        (
            attn_hook(layer, "hook_pattern"),
            partial(_keep_rows, out=out, layer=layer, heads=hs, rows=rows),
        )
        for layer, hs in by_layer.items()
    ]
    device = next(model.parameters()).device
    with torch.no_grad(), hooks(model, fwd_hooks):
        model(tp.tokens[None, :n_keys].to(device), return_type=None)
    pattern = torch.stack(
        [out[layer][by_layer[layer].index(head)] for layer, head in chosen]
    )  # chosen rows keys
    tokens = _token_strings(model, tp.tokens[:n_keys])
    return AttentionMap(
        pattern=pattern,
        heads=chosen,
        rows=rows,
        tokens=tokens,
        n_prompt=tp.n_prompt,
        relevant=tp.relevant,
        distractors=list(tp.distractors),
        n_sink=sink,
        query=query,
        row_tokens=[tokens[r] for r in rows],
        meta={"model": getattr(model.cfg, "model_name", None), "prompt": prompt.text[:80]},
    )


__all__ = [
    "attention_map_data",
    "AttentionMap",
    "Segment",
]
