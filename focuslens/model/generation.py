"""Greedy generation, one prompt at a time, with TransformerLens's KV cache.

Why one prompt at a time: with no batch there is no padding, so every token keeps the
position it has in :func:`focuslens.tokenize_prompt`, and the token spans of a labelled
prompt mean the same thing in every forward pass of the generation. Interventions that
read those spans (the oracles of ``focuslens.interventions``) rely on it.

How: the prompt is run once into the model's KV cache (TransformerLens's on a
``HookedTransformer``, Hugging Face's on a ``TransformerBridge``:
:mod:`focuslens.model.kvcache`), then each new token is fed alone, reusing the cached
keys and values. Hooks fire in every one of these forward passes (on the prompt pass
with ``query_pos = n_prompt``, then with ``query_pos = 1``). ``use_cache=False``
re-runs the whole sequence each step instead; the tokens are the same, only slower.

Stop conditions, checked after each new token:

* a token in ``stop_ids`` (default: the tokenizer's EOS);
* a stop string (``"\\n"`` for QA) in the decoded text. Leading whitespace of the
  answer is skipped first, so a model that opens with a newline is not cut to an
  empty answer. The text is cut before the stop string;
* ``max_new_tokens``, or the model's context ``n_ctx``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from focuslens.model.fused import fused_attention
from focuslens.typing import Model

StopReason = Literal["eos", "stop_string", "max_new_tokens", "n_ctx"]


@dataclass(frozen=True)
class Generation:
    """The result of one greedy generation.

    Attributes:
        tokens: ``[n_new]`` generated token ids (on the CPU), the stopping token
            included.
        text: The decoded answer (special tokens skipped), cut before a stop string.
        stop_reason: Why generation stopped: ``"eos"``, ``"stop_string"``,
            ``"max_new_tokens"`` or ``"n_ctx"``.
    """

    tokens: Int[Tensor, " n_new"]
    text: str
    stop_reason: StopReason


def _device(model: Model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _prompt_tokens(tokens: Any) -> Tensor:
    t = torch.as_tensor(tokens, dtype=torch.long)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(
            f"generate_greedy takes one prompt, as [pos] or [1, pos] tokens; got shape "
            f"{tuple(t.shape)} (batched generation would pad and shift token positions)"
        )
    if t.numel() == 0:
        raise ValueError("the prompt has no tokens")
    return t


def _stop_id_set(tokenizer: Any, stop_ids: int | Iterable[int] | None) -> set[int]:
    if stop_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        return set() if eos is None else {int(eos)}
    if isinstance(stop_ids, int):
        return {stop_ids}
    return {int(i) for i in stop_ids}


def _stop_string_tuple(stop_strings: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop_strings is None:
        return ()
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    out = tuple(stop_strings)
    if any(not isinstance(s, str) or not s for s in out):
        raise ValueError(f"stop_strings must be non-empty strings, got {out!r}")
    return out


def find_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Index of the first stop string in ``text`` after its leading whitespace, or None.

    Example:
        >>> find_stop("\\nParis\\nand more", ["\\n"])
        6
        >>> find_stop("\\n\\n", ["\\n"]) is None
        True
    """
    start = len(text) - len(text.lstrip())
    hits = [i for i in (text.find(s, start) for s in stop_strings) if i >= 0]
    return min(hits) if hits else None


def _stepper(
    model: Model, prompt: Tensor, use_cache: bool, chunk_size: int | None = None
) -> Callable[[int | None], Tensor]:
    """``step(token)`` feeds a new token (None: the prompt) and returns the next logits."""
    from focuslens.model.kvcache import cached_forward, kv_cache_kind, new_cache

    device = _device(model)
    seq = prompt.to(device)[None]
    if use_cache and kv_cache_kind(model) is not None:
        cache = new_cache(model)

        def step(token: int | None) -> Tensor:
            if token is None and chunk_size is not None:
                from focuslens.model.prefill import chunked_forward

                return chunked_forward(model, seq[0], chunk_size=chunk_size, past_kv_cache=cache)[0]
            new = seq if token is None else torch.tensor([[token]], device=device)
            logits = cached_forward(model, new, cache)
            assert logits is not None
            return logits[0, -1]

        return step

    if chunk_size is not None:
        raise ValueError(
            f"chunk_size={chunk_size} needs the KV cache: use_cache=True and a model that has "
            f"one (got {type(model).__name__}, use_cache={use_cache})"
        )
    state = {"seq": seq}

    def step_uncached(token: int | None) -> Tensor:
        if token is not None:
            state["seq"] = torch.cat([state["seq"], torch.tensor([[token]], device=device)], 1)
        logits = model(state["seq"], attention_mask=torch.ones_like(state["seq"]))
        return logits[0, -1]

    return step_uncached


def generate_greedy(
    model: Model,
    tokens: Int[Tensor, "*batch pos"] | Sequence[int],
    *,
    max_new_tokens: int = 100,
    stop_ids: int | Iterable[int] | None = None,
    stop_strings: str | Sequence[str] | None = None,
    use_cache: bool = True,
    chunk_size: int | None = None,
    fused: bool = True,
) -> Generation:
    """Greedy decoding of one prompt with the model's KV cache.

    Args:
        model: A ``HookedTransformer`` or a ``TransformerBridge``.
        tokens: ``[pos]`` (or ``[1, pos]``) prompt token ids, BOS included if wanted:
            for a labelled prompt, ``tp = tokenize_prompt(model, p); tp.tokens[:tp.n_prompt]``.
        max_new_tokens: Most tokens to generate.
        stop_ids: Token ids that end generation; default the tokenizer's EOS; ``()``
            for none.
        stop_strings: Strings that end generation (see the module docstring), e.g.
            ``"\\n"`` for QA with a base model; default none.
        use_cache: Use the KV cache; False re-runs the whole sequence each step, for
            checking.
        chunk_size: Prefill a long prompt in chunks of this many tokens through the KV
            cache (:func:`focuslens.model.prefill.chunked_forward`), so no layer holds more than
            ``chunk_size x n`` attention scores; the same tokens. Default: one pass.
        fused: Run the attention fused (:func:`focuslens.model.fused.fused_attention`: no
            ``n x n`` pattern except on layers whose scores or pattern are hooked); False
            runs TransformerLens's own attention everywhere.

    Returns:
        A :class:`Generation` with the new tokens, the answer text and the stop reason.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> prompt = focuslens.tasks.synthetic_retrieval(1, n_documents=4, seed=0)[0]
        >>> tp = focuslens.tokenize_prompt(model, prompt)
        >>> out = generate_greedy(model, tp.tokens[: tp.n_prompt], max_new_tokens=3)
        >>> out.stop_reason in ("eos", "max_new_tokens"), len(out.tokens) <= 3
        (True, True)
    """
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; call model.set_tokenizer(...) first")
    prompt = _prompt_tokens(tokens)
    n_ctx = model.cfg.n_ctx
    if prompt.numel() > n_ctx:
        raise ValueError(
            f"the prompt has {prompt.numel()} tokens, more than the model's n_ctx={n_ctx}"
        )
    stops = _stop_id_set(tokenizer, stop_ids)
    strings = _stop_string_tuple(stop_strings)
    if chunk_size is not None:
        from focuslens.model.memory import check_chunk_size

        check_chunk_size(chunk_size)
    if use_cache:
        from focuslens.model.kvcache import kv_cache_kind
        from focuslens.model.loading import ensure_backend

        if kv_cache_kind(model) is not None:
            ensure_backend(model, ("kv_cache",))
    step = _stepper(model, prompt, use_cache, chunk_size)
    new: list[int] = []
    stop = _Stop(tokenizer, stops, strings, max_new_tokens, int(prompt.numel()), n_ctx)
    with torch.no_grad(), fused_attention(model) if fused else contextlib.nullcontext():
        logits = step(None)
        while True:
            new.append(int(logits.argmax()))
            if stop.check(new):
                break
            logits = step(new[-1])
    return stop.generation(new)


@dataclass
class _Stop:
    """The stop conditions of one greedy generation (module docstring)."""

    tokenizer: Any
    stop_ids: set[int]
    stop_strings: tuple[str, ...]
    max_new_tokens: int
    n_prompt: int
    n_ctx: int
    reason: StopReason = "max_new_tokens"
    cut: int | None = None

    def check(self, new: list[int]) -> bool:
        """Whether to stop after the tokens ``new`` (recording why)."""
        if new[-1] in self.stop_ids:
            self.reason = "eos"
            return True
        if self.stop_strings:
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            self.cut = find_stop(text, self.stop_strings)
            if self.cut is not None:
                self.reason = "stop_string"
                return True
        if len(new) >= self.max_new_tokens:
            return True
        if self.n_prompt + len(new) > self.n_ctx:
            self.reason = "n_ctx"
            return True
        return False

    def generation(self, new: list[int]) -> Generation:
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(
            tokens=torch.tensor(new, dtype=torch.long),
            text=text[: self.cut],
            stop_reason=self.reason,
        )


def answer_tokens(generation: Generation, tokenizer: Any) -> Tensor:
    """The generated tokens that spell ``generation.text``: the shortest prefix of
    ``generation.tokens`` whose decoding covers the text (so a stopping EOS, or the tokens
    after a stop string, are left out). Empty when the text is empty."""
    target = len(generation.text)
    tokens = generation.tokens
    if target == 0:
        return tokens[:0]
    for m in range(1, tokens.numel() + 1):
        if len(tokenizer.decode(tokens[:m].tolist(), skip_special_tokens=True)) >= target:
            return tokens[:m]
    return tokens


__all__ = [
    "answer_tokens",
    "find_stop",
    "generate_greedy",
    "Generation",
    "StopReason",
]
