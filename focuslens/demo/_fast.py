"""A fast forward pass for training the demo model, on the HookedTransformer's own weights.

``HookedTransformer.forward`` materialises every attention pattern and runs many small
element-wise ops; on two CPU cores that makes a training step several times slower
than it needs to be. :func:`fast_logits` computes the same function from the same
parameters (RMSNorm, rotary in TransformerLens's GPT-NeoX layout, grouped-query
attention with ``repeat_interleave``, ``1/sqrt(d_head)`` scale) with fused attention,
so gradients flow into the HookedTransformer's parameters directly. ``train.py``
checks it against ``model(tokens)`` after training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    flipped = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + flipped * sin


def fast_logits(model, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of an attention-only rotary RMSNorm HookedTransformer.

    Supports exactly the demo model's architecture (no MLPs, rotary on the full head,
    no padding mask); it refuses other configurations.

    Args:
        model: The HookedTransformer.
        tokens: ``[batch, pos]`` token ids.
        at: Optional boolean mask ``[batch, pos]``: unembed only these positions.

    Returns:
        ``[batch, pos, d_vocab]`` logits, or ``[n_selected, d_vocab]`` when ``at`` is given.
    """
    cfg = model.cfg
    if not cfg.attn_only or cfg.positional_embedding_type != "rotary":
        raise ValueError("fast_logits supports attention-only rotary models only")
    if cfg.normalization_type != "RMS" or cfg.rotary_dim != cfg.d_head:
        raise ValueError(
            f"fast_logits needs RMSNorm and rotary_dim == d_head, got "
            f"{cfg.normalization_type!r}, rotary_dim={cfg.rotary_dim}, d_head={cfg.d_head}"
        )
    if cfg.rotary_adjacent_pairs:
        raise ValueError("fast_logits supports the GPT-NeoX rotary layout only")
    batch, pos = tokens.shape
    n_heads, d_head = cfg.n_heads, cfg.d_head
    n_kv = cfg.n_key_value_heads or n_heads
    grouped = n_kv != n_heads
    x = model.embed.W_E[tokens]
    for block in model.blocks:
        attn = block.attn
        h = _rms(x, block.ln1.w, block.ln1.eps)
        w_k, w_v = (attn._W_K, attn._W_V) if grouped else (attn.W_K, attn.W_V)
        b_k, b_v = (attn._b_K, attn._b_V) if grouped else (attn.b_K, attn.b_V)
        # one matmul for q, k and v: [d_model, (n_heads + 2 n_kv) d_head]
        w = torch.cat([attn.W_Q, w_k, w_v], dim=0).permute(1, 0, 2).flatten(1)
        b = torch.cat([attn.b_Q, b_k, b_v], dim=0).flatten()
        qkv = (h @ w + b).view(batch, pos, n_heads + 2 * n_kv, d_head).transpose(1, 2)
        q, k, v = qkv.split([n_heads, n_kv, n_kv], dim=1)
        cos, sin = attn.rotary_cos[:pos].to(x.dtype), attn.rotary_sin[:pos].to(x.dtype)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if grouped:
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / attn.attn_scale)
        z = z.transpose(1, 2).reshape(batch, pos, n_heads * d_head)
        x = x + z @ attn.W_O.flatten(0, 1) + attn.b_O
    if at is not None:
        x = x[at]
    x = _rms(x, model.ln_final.w, model.ln_final.eps)
    return x @ model.unembed.W_U + model.unembed.b_U
