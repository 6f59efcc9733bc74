"""Learn focus directions from labelled prompts (METHOD.md section 4).

Which method?

* ``method="learned"`` (default) is the authors' recipe. For each prompt a response is
  generated greedily from its *gold-only* variant (only the relevant document) and
  appended to the full prompt (teacher forcing). One pass of the *unmodified* model
  caches each layer's queries and keys after the rotary embedding (through hooks, so on
  either backend). Then each layer is trained on its own: ``d_q`` and ``d_k``
  (``[n_heads, d_head]``, initialised ``N(0, 0.01)``) are added to them, the layer's
  pattern is recomputed as ``softmax((q + d_q)(k + d_k)^T / attn_scale + causal mask)``
  (grouped-query attention: query head ``h`` reads KV head ``h // group``), and AdamW
  minimises minus the relevant-span mass of the response rows, averaged over the
  layer's heads. Attention that this formula does not reproduce (ALiBi, soft-capping,
  sinks, a local window in a learned layer) is refused. Every other
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

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from focuslens.directions.closed_form import closed_form_method
from focuslens.directions.core import FocusDirections, ModelShape
from focuslens.directions.inputs import (
    batch_rows,
    cache_queries_keys,
    learning_prompts,
    pad_inputs,
    require_reproducible_attention,
)
from focuslens.heads import HeadSet, unique_heads
from focuslens.model.hooks import attention_scale, n_kv_heads
from focuslens.model.loading import ensure_backend, qk_points
from focuslens.prompts.spans import LabeledPrompt
from focuslens.prompts.tokens import TokenizedPrompt
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.reduce import prepare, span_mass
from focuslens.typing import Model, QueryRows

"""Where the teacher-forced response comes from."""


# ---------------------------------------------------------------------------- learned
def layer_mass(
    model: Model,
    layer: int,
    inputs: tuple[Tensor, Tensor],
    d_q: Tensor,
    d_k: Tensor,
    rows: tuple[Tensor, Tensor, Tensor],
) -> Tensor:
    """``[batch, n_heads]`` relevant-span mass of one attention layer recomputed from its
    cached queries and keys with ``d_q`` and ``d_k`` added (differentiable in the
    directions): ``softmax((q + d_q)(k + d_k)^T / attn_scale + causal mask)``.

    Args:
        model: The model (its shape and the layer's attention scale).
        layer: The layer.
        inputs: ``(queries [batch, pos, n_heads, d_head], keys [batch, pos, n_kv_heads,
            d_head])``, rotated on rotary models (:func:`cache_queries_keys`).
        d_q: ``[n_heads, d_head]``.
        d_k: ``[n_heads, d_head]``, mapped to KV heads by the mean over each group
            (query head ``h`` reads KV head ``h // group``).
        rows: ``(rows, row_mask, relevant_masks)`` from :func:`batch_rows`.
    """
    q, k = inputs
    n_kv = n_kv_heads(model)
    group = model.cfg.n_heads // n_kv
    q = q + d_q.to(q.dtype)
    k = (k + d_k.reshape(n_kv, group, -1).mean(1).to(k.dtype)).repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / attention_scale(model, layer)
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return span_mass(pattern, *rows)[..., 0]


BatchMass = Callable[[list[int], Tensor, Tensor], Tensor]
"""``f(example indices, d_q, d_k) -> [batch, n_heads]`` relevant-span mass of one layer."""


def cached_batch_mass(
    model: Model,
    layer: int,
    cached: list[tuple[Tensor, Tensor]],
    tps: list[TokenizedPrompt],
    query: QueryRows,
) -> BatchMass:
    """The mass of a batch from the cached queries and keys (right-padded)."""

    def mass(idx: list[int], d_q: Tensor, d_k: Tensor) -> Tensor:
        q = pad_inputs([cached[i][0] for i in idx])
        k = pad_inputs([cached[i][1] for i in idx])
        rows = batch_rows([tps[i] for i in idx], query, q.shape[1])
        return layer_mass(model, layer, (q, k), d_q, d_k, rows)

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
    cache = cache_queries_keys(model, tps, layers)
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


METHODS: dict[str, Callable[..., tuple[Tensor, Tensor, dict[str, Any]]]] = {
    "learned": _learned,
    "closed_form": closed_form_method,
}
"""Direction methods: name -> ``f(model, tokenised prompts, layers, settings)``."""


# ---------------------------------------------------------------------------- public
def learn_focus_directions(
    model: Model,
    prompts: Iterable[LabeledPrompt],
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
        model: A ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer. It is
            never modified.
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
        record_auto: Record the target of ``alpha="auto"`` on the gold-only prompts. Prompts
            without a document layout (no ``gold_only()``, e.g. read from a "labeled" file)
            have no gold-only variant: then no target is recorded, and
            ``training["auto_note"]`` says why (learning itself does not fail).
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
    ensure_backend(model, (*qk_points(model), "hook_pattern"))
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    prompts = [prompts] if isinstance(prompts, LabeledPrompt) else list(prompts)
    ranked = None if heads is None else unique_heads(model, heads)
    layers = sorted({layer for layer, _ in ranked}) if ranked else list(range(model.cfg.n_layers))
    require_reproducible_attention(model, "learn_focus_directions", layers)
    answered, skipped = learning_prompts(model, prompts, response, max_new_tokens)
    tps = prepare(model, answered, query=query, sink=0)
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
    if record_auto and all(p.has_variants for p in answered):
        from focuslens.directions.magnitude import record_auto_target

        out = record_auto_target(model, out, answered)
    elif record_auto:  # the target is measured on gold-only variants, which these lack
        out.training["auto"] = None
        out.training["auto_note"] = (
            "no target for alpha='auto' was recorded: the prompts carry no document layout, "
            "so their gold-only variants cannot be built (give prompts built from documents, "
            "or AutoAlpha(target=...) when steering)"
        )
    return out


def direction_cosine(a: FocusDirections, b: FocusDirections, heads: Any) -> Tensor:
    """Per-head cosine between the query directions of ``a`` and ``b``: ``[len(heads)]``."""
    pairs = list(HeadSet(heads))
    qa = torch.stack([a.d_q[layer, head].float() for layer, head in pairs])
    qb = torch.stack([b.d_q[layer, head].float() for layer, head in pairs])
    return torch.nn.functional.cosine_similarity(qa, qb, dim=-1)


__all__ = [
    "direction_cosine",
    "learn_focus_directions",
]
