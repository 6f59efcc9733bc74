"""The one prompt batch every analysis feeds a model: validation, padding and row tables.

Prompts are tokenised and checked once, by :func:`tokenized_prompts`, whose errors name
the offending prompt; :class:`PromptBatch` right-pads them into one ``[batch, pos]``
tensor. Right padding leaves every real token's attention exactly as in an unbatched pass
(causal attention never looks to the right), so batched results equal unbatched ones.
The padding id is the tokenizer's pad token, else 0 (:func:`pad_token_id`); it is never
read.

Which query rows? (:func:`query_rows`, ``query=``)
    * ``"response"`` (the authors' convention): the response tokens' own positions.
      Excludes the last prompt token, includes the last response token.
    * ``"predict"``: the positions that *predict* the response tokens, one to the left
      (the last prompt token up to the second-to-last response token).
    * ``"last"``: the final prompt token only (no response needed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt, tokenize_prompt
from focuslens.typing import Model, QueryRows

QUERIES = ("response", "predict", "last")
"""The query-row conventions (module docstring)."""


def pad_token_id(model: Model) -> int:
    """The id right padding uses: the tokenizer's pad token, else 0."""
    tokenizer = getattr(model, "tokenizer", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def check_query(query: Any) -> None:
    if query not in QUERIES:
        raise ValueError(f"query must be 'response', 'predict' or 'last', got {query!r}")


def query_rows(tp: TokenizedPrompt, query: QueryRows) -> list[int]:
    """Token positions of the query rows of one tokenised prompt (module docstring).

    Example:
        >>> from focuslens.prompts import LabeledPrompt, TokenizedPrompt
        >>> p = LabeledPrompt("a b", (0, 1), [], ["c d"], response="c d")
        >>> tp = TokenizedPrompt(torch.arange(5), n_prompt=3, relevant=(1, 2), distractors=[], source=p)
        >>> query_rows(tp, "response"), query_rows(tp, "predict"), query_rows(tp, "last")
        ([3, 4], [2, 3], [2])
    """
    check_query(query)
    if query == "last":
        return [tp.n_prompt - 1]
    if tp.n_response == 0:
        raise ValueError(
            f"prompt {tp.source.text[:60]!r} has no response tokens; query={query!r} needs a "
            "response (or use query='last')"
        )
    if query == "response":
        return list(range(tp.n_prompt, len(tp)))
    return list(range(tp.n_prompt - 1, len(tp) - 1))


def _as_list(prompts: Any) -> list[Any]:
    if isinstance(prompts, (LabeledPrompt, TokenizedPrompt)):
        return [prompts]
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
        raise TypeError(
            "expected labelled prompts (a LabeledPrompt or TokenizedPrompt, or a list of them), "
            f"got {type(prompts).__name__}"
        )
    out = list(prompts)
    if not out:
        raise ValueError("no prompts given")
    return out


def tokenized_prompts(
    model: Model,
    prompts: Any,
    *,
    query: QueryRows | None = None,
    require_relevant: str | None = None,
    prepend_bos: bool | None = None,
) -> list[TokenizedPrompt]:
    """Tokenise and check prompts, with errors that name the prompt (``prompt 3: ...``).

    Args:
        model: The model whose tokenizer and context length apply.
        prompts: A :class:`LabeledPrompt` or :class:`TokenizedPrompt` (exact token ids, e.g.
            a generated answer), or any iterable of them; empty is refused.
        query: If given, the query-row convention the caller reads; ``"response"`` and
            ``"predict"`` need response tokens.
        require_relevant: If given, refuse a prompt without a relevant span, with this
            text as the reason (``"contextual scores need one"``).
        prepend_bos: Passed to :func:`tokenize_prompt`.

    Returns:
        One :class:`TokenizedPrompt` per prompt, each within the model's ``n_ctx``.
    """
    if query is not None:
        check_query(query)
    n_ctx = model.cfg.n_ctx
    out = []
    for idx, prompt in enumerate(_as_list(prompts)):
        if not isinstance(prompt, (LabeledPrompt, TokenizedPrompt)):
            raise TypeError(
                f"prompt {idx} is a {type(prompt).__name__}, expected a LabeledPrompt "
                "(or a TokenizedPrompt)"
            )
        try:
            if require_relevant and prompt.relevant is None:
                raise ValueError(f"it has no relevant span (relevant=None); {require_relevant}")
            needs_response = query in ("response", "predict")
            if isinstance(prompt, TokenizedPrompt):
                tp = prompt
                if needs_response and tp.n_response == 0:
                    raise ValueError(f"query={query!r} needs response tokens; it has none")
            else:
                tp = tokenize_prompt(
                    model,
                    prompt,
                    prepend_bos=prepend_bos,
                    require_response=needs_response,
                    max_tokens=n_ctx,  # checked before the spans are mapped
                )
            if len(tp) > n_ctx:
                raise ValueError(
                    f"it has {len(tp)} tokens, more than the model's context n_ctx={n_ctx}"
                )
            if query is not None:
                query_rows(tp, query)
        except ValueError as exc:
            raise ValueError(f"prompt {idx}: {exc}") from None
        out.append(tp)
    return out


@dataclass(frozen=True)
class PromptBatch:
    """Tokenised prompts right-padded into one batch.

    Attributes:
        prompts: The tokenised prompts, in batch order.
        tokens: ``[batch, pos]`` token ids, right padded.
        real: ``[batch, pos]`` True on real (unpadded) tokens.
        n_prompt: ``[batch]`` prompt lengths (BOS included); later positions are the response.
    """

    prompts: tuple[TokenizedPrompt, ...]
    tokens: Int[Tensor, "batch pos"]
    real: Bool[Tensor, "batch pos"]
    n_prompt: Int[Tensor, " batch"]

    @classmethod
    def of(cls, prompts: Sequence[TokenizedPrompt], pad_id: int = 0) -> PromptBatch:
        """Right-pad ``prompts`` with ``pad_id`` (use :func:`pad_token_id`)."""
        prompts = tuple(prompts)
        if not prompts:
            raise ValueError("a batch needs at least one prompt")
        length = max(len(tp) for tp in prompts)
        tokens = torch.full((len(prompts), length), int(pad_id), dtype=torch.long)
        real = torch.zeros(len(prompts), length, dtype=torch.bool)
        for b, tp in enumerate(prompts):
            tokens[b, : len(tp)] = tp.tokens
            real[b, : len(tp)] = True
        n_prompt = torch.tensor([tp.n_prompt for tp in prompts])
        return cls(prompts, tokens, real, n_prompt)

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def has_relevant(self) -> Bool[Tensor, " batch"]:
        return torch.tensor([tp.relevant is not None for tp in self.prompts])

    def rows(
        self, query: QueryRows
    ) -> tuple[Int[Tensor, "batch n_rows"], Bool[Tensor, "batch n_rows"]]:
        """The query rows of each prompt, padded: ``(rows, row_mask)``."""
        per = [query_rows(tp, query) for tp in self.prompts]
        n_rows = max(len(r) for r in per)
        rows = torch.zeros(self.size, n_rows, dtype=torch.long)
        mask = torch.zeros(self.size, n_rows, dtype=torch.bool)
        for b, r in enumerate(per):
            rows[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = True
        return rows, mask

    def targets(self, fill: int = 0) -> Int[Tensor, "batch n_rows"]:
        """The response tokens, aligned with ``rows("predict")`` (padded with ``fill``)."""
        n_rows = max(tp.n_response for tp in self.prompts)
        out = torch.full((self.size, n_rows), fill, dtype=torch.long)
        for b, tp in enumerate(self.prompts):
            out[b, : tp.n_response] = tp.tokens[tp.n_prompt :]
        return out

    def relevant_mask(self, length: int | None = None) -> Bool[Tensor, "batch key_pos"]:
        """True on each prompt's relevant span (no span: all False), over ``length`` keys."""
        mask = torch.zeros(self.size, self.length if length is None else length, dtype=torch.bool)
        for b, tp in enumerate(self.prompts):
            if tp.relevant is not None:
                mask[b, tp.relevant[0] : tp.relevant[1]] = True
        return mask


def batches(
    prompts: Sequence[TokenizedPrompt], batch_size: int, pad_id: int = 0
) -> Iterator[tuple[slice, PromptBatch]]:
    """``(index, batch)`` pairs over ``prompts`` in order, ``batch_size`` at a time."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        yield slice(start, start + len(chunk)), PromptBatch.of(chunk, pad_id)


__all__ = [
    "QUERIES",
    "PromptBatch",
    "batches",
    "pad_token_id",
    "query_rows",
    "tokenized_prompts",
]
