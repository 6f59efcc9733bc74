"""Learn focus directions from labelled prompts (METHOD.md section 4).

Which method?

* ``method="learned"`` (default) is the authors' recipe. For each prompt a response is
  generated greedily from its *gold-only* variant (only the relevant document) and
  appended to the full prompt (teacher forcing). One pass of the *unmodified* model
  caches the input of each layer's attention. Then each layer is trained on its own:
  ``d_q`` and ``d_k`` (``[n_heads, d_head]``, initialised ``N(0, 0.01)``) are added
  after the rotary embedding, only that layer's attention runs (up to its pattern; the
  value and output projections are skipped), and AdamW minimises minus the
  relevant-span mass of the response rows, averaged over the layer's heads. Every other
  weight is frozen (gradients are taken for the directions only, so the model is
  never touched). Since a layer's input does not depend on its own directions, this
  equals backpropagating through the whole model, at a fraction of the cost
  (``benchmarks/bench_steering.py`` measures the speed-up).
* ``method="closed_form"`` computes, without training, the gradient of the
  relevant-span mass with respect to ``d_q`` at zero. Per head and response row ``i``
  with pattern ``A`` and (rotated) keys ``k``::

      d m_i / d d_q = ( sum_{j in S} A_ij k_j  -  m_i sum_j A_ij k_j ) / sqrt(d_head)
                    = m_i (relevant-weighted mean key - attention-weighted mean key) / sqrt(d_head)

  averaged over response rows and examples: one cached pass of the keys and the pattern
  rows. Each head's vector is then scaled to the mean norm of that head's queries on
  the response rows (our choice: ``alpha = 1`` adds a vector as long as a typical
  query). ``d_k`` is zero: its true gradient is exactly zero (the key direction cancels
  in the softmax, see :mod:`focuslens.directions.steering`).

Note on Adam: its update is per coordinate, so a learned direction drifts towards the
*sign pattern* of the gradient, not the gradient itself; this is one reason the two
methods need not agree even when training is short.

Both return a :class:`~focuslens.directions.FocusDirections` whose ``training`` dict
records the method, settings, per-layer loss history (learned), the number of prompts,
and the target of ``alpha="auto"`` (:func:`focuslens.directions.magnitude.record_auto_target`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from focuslens.directions.core import FocusDirections, ModelShape
from focuslens.heads import HeadSet, unique_heads
from focuslens.model.hooks import (
    attention_scale,
    attn_hook,
    hooks,
    key_hook_name,
    n_kv_heads,
    pre_hooks,
    query_hook_name,
)
from focuslens.model.responses import with_responses
from focuslens.prompts.batch import PromptBatch, batches, pad_token_id
from focuslens.prompts.spans import LabeledPrompt, TokenizedPrompt
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.reduce import prepare, span_mass
from focuslens.typing import Model, QueryRows

LEARNING_RESPONSES = ("gold_only", "given")
"""Where the learning responses come from (see :mod:`focuslens.model.responses`)."""
"""Where the teacher-forced response comes from."""


class _StopForward(Exception):
    """Raised from ``hook_pattern`` to skip the rest of an attention layer."""


# ---------------------------------------------------------------------------- data
def _learning_prompts(
    model: Model, prompts: Sequence[LabeledPrompt], response: str, max_new_tokens: int | None
) -> tuple[list[LabeledPrompt], list[int]]:
    """Labelled prompts with their teacher-forced responses (``gold_only`` or ``given``)."""
    if response not in LEARNING_RESPONSES:
        raise ValueError(f"response must be one of {LEARNING_RESPONSES}, got {response!r}")
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, LabeledPrompt) and prompt.relevant is None:
            raise ValueError(
                f"prompt {i} has no relevant document (relevant=None); focus directions are "
                "learned from prompts whose relevant span is labelled"
            )
    return with_responses(model, prompts, response, max_new_tokens=max_new_tokens)


def _batch_rows(
    batch: Sequence[TokenizedPrompt], query: QueryRows, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``rows [b, r]``, ``row_mask [b, r]`` and relevant key masks ``[b, 1, length]``."""
    prompts = PromptBatch.of(batch)
    rows, row_mask = prompts.rows(query)
    return rows, row_mask.float(), prompts.relevant_mask(length)[:, None, :].float()


def _pad(seqs: list[Tensor], value: float | int = 0.0) -> Tensor:
    """Right-pad ``[pos, ...]`` tensors to one ``[batch, pos, ...]`` tensor."""
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


# ---------------------------------------------------------------------------- caching
def require_hooked_transformer(model: Model, what: str) -> None:
    """Refuse a model that is not a ``HookedTransformer``, saying what to do instead.

    Learning runs one attention layer on its cached inputs (``query_input`` /
    ``key_input`` and the layer's own weights, ``attn_scale`` included), which only
    TransformerLens's ``HookedTransformer`` attention modules expose.
    """
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"{what} needs a HookedTransformer, got a {type(model).__name__}: it runs each "
            "attention layer on its own from cached inputs, which a TransformerBridge's "
            "attention modules do not support. Load the model with "
            "HookedTransformer.from_pretrained(name, hf_model=...) (or focuslens.load_model "
            "with a TransformerLens model name) to learn directions; the result can then "
            "steer either backend of the same shape."
        )


def cache_attention_inputs(
    model: Model, tps: Sequence[TokenizedPrompt], layers: Sequence[int]
) -> dict[int, list[tuple[Tensor, Tensor]]]:
    """Per layer and example, the (query, key) inputs of that layer's attention.

    One unbatched pass per example of the unmodified model, stopped after the last
    requested layer; the inputs are taken from a forward pre-hook on each attention
    module (``[pos, d_model]``, detached).
    """
    out: dict[int, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device

    def grab(layer: int, module: Any, args: tuple, kwargs: dict) -> None:
        out[layer].append((kwargs["query_input"][0].detach(), kwargs["key_input"][0].detach()))

    with pre_hooks(model, grab, layers=layers), torch.no_grad():
        for tp in tps:
            model(tp.tokens[None].to(device), stop_at_layer=max(layers) + 1)
    return out


# ---------------------------------------------------------------------------- learned
def layer_mass(
    model: Model,
    layer: int,
    inputs: tuple[Tensor, Tensor],
    d_q: Tensor,
    d_k: Tensor,
    rows: tuple[Tensor, Tensor, Tensor],
) -> Tensor:
    """``[batch, n_heads]`` relevant-span mass of one attention layer run on its cached
    inputs with ``d_q`` and ``d_k`` added (differentiable in the directions).

    Args:
        model: The model (its layer ``layer`` is run, nothing else).
        layer: The layer.
        inputs: ``(query_input, key_input)``, each ``[batch, pos, d_model]``.
        d_q: ``[n_heads, d_head]``.
        d_k: ``[n_heads, d_head]``, mapped to KV heads by the mean over each group.
        rows: ``(rows, row_mask, relevant_masks)`` from :func:`_batch_rows`.
    """
    attn = model.blocks[layer].attn
    n_kv = n_kv_heads(model)
    group = model.cfg.n_heads // n_kv
    captured: dict[str, Tensor] = {}

    def add_q(q: Tensor, hook: Any) -> Tensor:
        return q + d_q.to(q.dtype)

    def add_k(k: Tensor, hook: Any) -> Tensor:
        return k + d_k.reshape(n_kv, group, -1).mean(1).to(k.dtype)

    def stop(pattern: Tensor, hook: Any) -> None:
        captured["pattern"] = pattern
        raise _StopForward

    fwd = [
        (query_hook_name(model, layer), add_q),
        (key_hook_name(model, layer), add_k),
        (attn_hook(layer, "hook_pattern"), stop),
    ]
    query_input, key_input = inputs
    with hooks(model, fwd):
        try:
            attn(query_input=query_input, key_input=key_input, value_input=key_input)
        except _StopForward:
            pass
    return span_mass(captured["pattern"], *rows)[..., 0]


BatchMass = Callable[[list[int], Tensor, Tensor], Tensor]
"""``f(example indices, d_q, d_k) -> [batch, n_heads]`` relevant-span mass of one layer."""


def cached_batch_mass(
    model: Model,
    layer: int,
    cached: list[tuple[Tensor, Tensor]],
    tps: list[TokenizedPrompt],
    query: QueryRows,
) -> BatchMass:
    """The mass of a batch from the cached attention inputs (right-padded), one layer run."""

    def mass(idx: list[int], d_q: Tensor, d_k: Tensor) -> Tensor:
        q_in = _pad([cached[i][0] for i in idx])
        k_in = _pad([cached[i][1] for i in idx])
        rows = _batch_rows([tps[i] for i in idx], query, q_in.shape[1])
        return layer_mass(model, layer, (q_in, k_in), d_q, d_k, rows)

    return mass


def train_layer(
    model: Model,
    batch_mass: BatchMass,
    n_examples: int,
    settings: dict[str, Any],
    generator: torch.Generator,
    tick: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor, list[float]]:
    """AdamW on one layer's ``(d_q, d_k)``, maximising ``batch_mass``.

    Args:
        model: The model (for its shape and device).
        batch_mass: Computes the mass of a batch of examples (see :data:`BatchMass`).
        n_examples: Number of examples.
        settings: ``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``init_std``.
        generator: Draws the initial directions, then each epoch's order.
        tick: Called after each epoch (progress bars).

    Returns:
        ``(d_q, d_k, per-epoch mean loss)``.
    """
    shape = (model.cfg.n_heads, model.cfg.d_head)
    device = next(model.parameters()).device
    init = settings["init_std"]
    d_q = (torch.randn(shape, generator=generator) * init).to(device).requires_grad_()
    d_k = (torch.randn(shape, generator=generator) * init).to(device).requires_grad_()
    opt = torch.optim.AdamW([d_q, d_k], lr=settings["lr"], weight_decay=settings["weight_decay"])
    history = []
    bs = settings["batch_size"]
    for _ in range(settings["epochs"]):
        order = torch.randperm(n_examples, generator=generator).tolist()
        losses = []
        for start in range(0, len(order), bs):
            with torch.enable_grad():
                loss = -batch_mass(order[start : start + bs], d_q, d_k).mean()
                g_q, g_k = torch.autograd.grad(loss, [d_q, d_k])
            d_q.grad, d_k.grad = g_q, g_k
            opt.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / len(losses))
        if tick is not None:
            tick()
    return d_q.detach(), d_k.detach(), history


def _learned(
    model: Model, tps: list[TokenizedPrompt], layers: list[int], settings: dict[str, Any]
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    cache = cache_attention_inputs(model, tps, layers)
    shape = ModelShape.of(model)
    d_q = torch.zeros(shape.n_layers, shape.n_heads, shape.d_head)
    d_k = torch.zeros_like(d_q)
    generator = torch.Generator().manual_seed(settings["seed"])
    history: dict[str, list[float]] = {}
    bar = None
    if settings["progress"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(layers) * settings["epochs"], desc="focus directions", unit="epoch")
    for layer in layers:
        mass = cached_batch_mass(model, layer, cache[layer], tps, settings["query"])
        q, k, hist = train_layer(
            model, mass, len(tps), settings, generator, bar.update if bar else None
        )
        d_q[layer], d_k[layer] = q.cpu().float(), k.cpu().float()
        history[str(layer)] = hist
    if bar is not None:
        bar.close()
    return d_q, d_k, {"loss_history": history}


# ---------------------------------------------------------------------------- closed form
def closed_form_gradient(
    model: Model,
    tps: Sequence[TokenizedPrompt],
    layers: Sequence[int],
    *,
    query: QueryRows = "response",
    batch_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Gradient of the layer loss's mass with respect to ``d_q`` at zero, and the mean
    query norms.

    Returns:
        ``(grad [n_layers, n_heads, d_head], query_norm [n_layers, n_heads])``: per head,
        the mean over examples of the mean over response rows of
        ``(sum_{j in S} A_ij k_j - m_i sum_j A_ij k_j) / attn_scale``, divided by
        ``n_heads`` (the layer loss averages over heads), so it equals autograd's
        gradient of the mean relevant-span mass. Layers not requested are zero.
    """
    acc = _GradientSums(model, query)
    device = next(model.parameters()).device
    for _, prompts in batches(list(tps), batch_size, pad_token_id(model)):
        tokens = prompts.tokens
        acc.batch = _batch_rows(prompts.prompts, query, tokens.shape[1])
        fwd = []
        for layer in layers:
            fwd += [
                (key_hook_name(model, layer), _bind(acc.on_k, layer)),
                (query_hook_name(model, layer), _bind(acc.on_q, layer)),
                (attn_hook(layer, "hook_pattern"), _bind(acc.on_pattern, layer)),
            ]
        with torch.no_grad(), hooks(model, fwd):
            model(tokens.to(device), stop_at_layer=max(layers) + 1, return_type=None)
    return acc.grad / len(tps), acc.qnorm / len(tps)


class _GradientSums:
    """Hook callbacks that sum the closed-form gradient and query norms over examples."""

    def __init__(self, model: Model, query: QueryRows) -> None:
        cfg = model.cfg
        self.model = model
        self.grad = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head)
        self.qnorm = torch.zeros(cfg.n_layers, cfg.n_heads)
        self.group = cfg.n_heads // n_kv_heads(model)
        self.batch: tuple[Tensor, Tensor, Tensor] | None = None
        self.keys: dict[int, Tensor] = {}
        self.norms: dict[int, Tensor] = {}

    def on_k(self, k: Tensor, hook: Any, layer: int) -> None:
        self.keys[layer] = k.repeat_interleave(self.group, dim=2).float()  # b k h d

    def on_q(self, q: Tensor, hook: Any, layer: int) -> None:
        rows = self.batch[0].to(q.device)  # type: ignore[index]
        idx = rows[:, :, None, None].expand(-1, -1, q.shape[2], q.shape[3])
        self.norms[layer] = q.gather(1, idx).float().norm(dim=-1)  # b r h

    def on_pattern(self, pattern: Tensor, hook: Any, layer: int) -> None:
        rows, row_mask, masks = (t.to(pattern.device) for t in self.batch)  # type: ignore[union-attr]
        b, h, _, k = pattern.shape
        a = pattern.gather(2, rows[:, None, :, None].expand(b, h, rows.shape[1], k)).float()
        rel = masks[:, 0]  # b k
        keys = self.keys.pop(layer)
        m = torch.einsum("bhrk,bk->bhr", a, rel)
        k_s = torch.einsum("bhrk,bk,bkhd->bhrd", a, rel, keys)
        k_all = torch.einsum("bhrk,bkhd->bhrd", a, keys)
        g = (k_s - m[..., None] * k_all) / attention_scale(self.model, layer)
        w = row_mask
        per_ex = (g * w[:, None, :, None]).sum(2) / w.sum(1)[:, None, None]  # b h d
        self.grad[layer] += per_ex.sum(0).cpu() / h
        qn = (self.norms.pop(layer) * w[:, :, None]).sum(1) / w.sum(1)[:, None]  # b h
        self.qnorm[layer] += qn.sum(0).cpu()


def _bind(fn: Callable, layer: int) -> Callable:
    return lambda act, hook: fn(act, hook, layer)


def _closed_form(
    model: Model, tps: list[TokenizedPrompt], layers: list[int], settings: dict[str, Any]
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    grad, qnorm = closed_form_gradient(
        model, tps, layers, query=settings["query"], batch_size=settings["batch_size"]
    )
    unit = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    d_q = unit * qnorm[..., None]
    return d_q, torch.zeros_like(d_q), {"gradient_norm": grad.norm(dim=-1).tolist()}


METHODS: dict[str, Callable[..., tuple[Tensor, Tensor, dict[str, Any]]]] = {
    "learned": _learned,
    "closed_form": _closed_form,
}
"""Direction methods: name -> ``f(model, tokenised prompts, layers, settings)``."""


# ---------------------------------------------------------------------------- public
def learn_focus_directions(
    model: Model,
    prompts: Sequence[LabeledPrompt],
    *,
    heads: Any = None,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 1,
    method: str = "learned",
    response: str = "gold_only",
    query: QueryRows = "response",
    init_std: float = 0.01,
    weight_decay: float = 0.01,
    max_new_tokens: int | None = None,
    record_auto: bool = True,
    progress: bool = False,
) -> FocusDirections:
    """Learn focus directions for every layer that holds a head of ``heads``.

    Args:
        model: A ``HookedTransformer`` with a tokenizer. It is never modified.
        prompts: Labelled prompts with a relevant document, built from documents (so
            that their gold-only variant exists) unless ``response="given"``.
        heads: Heads to learn for (a HeadSet, ``(layer, head)`` pairs, ranked best
            first if you want :meth:`FocusDirections.top_heads` to follow your order).
            Their layers are learned, all heads of each (the loss averages over the
            layer's heads, as in the authors' code; each head's direction depends only
            on its own term). Default: all layers, with heads ranked by their contextual
            (relevant-span) score on the prompts.
        epochs: Passes over the prompts (``method="learned"``).
        lr: AdamW learning rate.
        seed: Seeds the initialisation and the shuffling (a private generator; the
            global RNG is not touched).
        batch_size: Prompts per step (right-padded; 1 as in the paper).
        method: ``"learned"`` or ``"closed_form"`` (see the module docstring).
        response: ``"gold_only"`` (generate from the gold-only prompt, the authors'
            recipe) or ``"given"`` (use each prompt's ``response``).
        query: Query rows of the loss: ``"response"`` (default), ``"predict"``, ``"last"``.
        init_std: Standard deviation of the initial directions.
        weight_decay: AdamW weight decay (PyTorch's default).
        max_new_tokens: Cap on the gold-only answers' length.
        record_auto: Record the target of ``alpha="auto"`` on the gold-only prompts.
        progress: Show a progress bar.

    Returns:
        A :class:`~focuslens.directions.FocusDirections`.

    Example:
        >>> import focuslens
        >>> model = focuslens.load_demo_model()
        >>> train = focuslens.tasks.synthetic_retrieval(4, n_documents=8, seed=0)
        >>> directions = focuslens.learn_focus_directions(model, train, heads=[(1, 0)], epochs=1)
        >>> list(directions.layers), directions.heads
        ([1], [(1, 0)])
        >>> with directions.steer(model, [(1, 0)], alpha=0.3):
        ...     logits = model(focuslens.tokenize_prompt(model, train[0]).tokens[None])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    require_hooked_transformer(model, "learn_focus_directions")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if isinstance(prompts, LabeledPrompt):
        prompts = [prompts]
    ranked = None if heads is None else unique_heads(model, heads)
    answered, skipped = _learning_prompts(model, prompts, response, max_new_tokens)
    tps = prepare(model, answered, query=query, sink=0)
    layers = sorted({layer for layer, _ in ranked}) if ranked else list(range(model.cfg.n_layers))
    settings = {
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_size,
        "query": query,
        "init_std": init_std,
        "weight_decay": weight_decay,
        "progress": progress,
    }
    d_q, d_k, extra = METHODS[method](model, tps, layers, settings)
    if ranked is None:
        ranked = contextual_scores(model, answered, query=query, sink=0).top_heads(
            model.cfg.n_layers * model.cfg.n_heads
        )
    training = {
        "method": method,
        **{k: v for k, v in settings.items() if k != "progress"},
        "response": response,
        "n_prompts": len(tps),
        "skipped_empty_response": skipped,
        "optimizer": "AdamW" if method == "learned" else None,
        **extra,
    }
    out = FocusDirections(
        d_q=d_q,
        d_k=d_k,
        shape=ModelShape.of(model),
        heads=ranked,
        layers=layers,
        training=training,
        meta={"model": getattr(model.cfg, "model_name", None)},
    )
    if record_auto:
        from focuslens.directions.magnitude import record_auto_target

        out = record_auto_target(model, out, answered)
    return out


def direction_cosine(a: FocusDirections, b: FocusDirections, heads: Any) -> Tensor:
    """Per-head cosine between the query directions of ``a`` and ``b``: ``[len(heads)]``."""
    pairs = list(HeadSet(heads))
    qa = torch.stack([a.d_q[layer, head].float() for layer, head in pairs])
    qb = torch.stack([b.d_q[layer, head].float() for layer, head in pairs])
    return torch.nn.functional.cosine_similarity(qa, qb, dim=-1)


__all__ = [
    "LEARNING_RESPONSES",
    "closed_form_gradient",
    "direction_cosine",
    "learn_focus_directions",
]
