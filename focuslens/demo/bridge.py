"""The demo model as a ``TransformerBridge``: the same weights in a Hugging Face Llama.

transformer-lens 4.x has no ``HookedTransformer``; its models are bridges around Hugging
Face modules. The demo model (attention-only, RMSNorm, rotary rotate-half, grouped-query
attention, biases on q/k/v/o and on the unembedding) maps onto ``LlamaForCausalLM``
exactly:

* q/k/v/o projections with ``attention_bias=True``; Llama's rotary embedding is the
  same rotate-half rotation (TransformerLens's *native* bridge rotates adjacent pairs
  instead, and never fires ``hook_rot_q``/``hook_rot_k``, so it is not used);
* no MLP: Llama's is kept with a zero down-projection (width 1), which adds exactly 0;
* the unembedding bias: Llama's ``lm_head`` has none, so it is replaced by a linear layer
  with a bias before the bridge wraps the model.

The bridge runs in compatibility mode without weight processing (no folding or
centring), so its logits are the HookedTransformer's, not shifted ones; the tests
compare both (logits, scores, steering) on the shipped weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def llama_config(cfg: dict[str, Any], tokenizer: Any) -> Any:
    """A ``LlamaConfig`` of the demo model's shape (from its TransformerLens config)."""
    from transformers import LlamaConfig

    if not cfg.get("attn_only") or cfg.get("normalization_type") != "RMS":
        raise ValueError("the demo bridge maps attention-only RMSNorm models only")
    if cfg.get("positional_embedding_type") != "rotary" or cfg.get("rotary_dim") != cfg["d_head"]:
        raise ValueError("the demo bridge maps models with full-width rotary embeddings only")
    return LlamaConfig(
        vocab_size=cfg["d_vocab"],
        hidden_size=cfg["d_model"],
        intermediate_size=1,
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg.get("n_key_value_heads") or cfg["n_heads"],
        head_dim=cfg["d_head"],
        max_position_embeddings=cfg["n_ctx"],
        rms_norm_eps=cfg.get("eps", 1e-5),
        rope_theta=float(cfg.get("rotary_base", 10000)),
        attention_bias=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def llama_state(params: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The demo model's TransformerLens tensors as ``LlamaForCausalLM`` tensors."""

    def heads_out(w: torch.Tensor) -> torch.Tensor:  # [head, d_model, d_head] -> [hd, d_model]
        return w.permute(0, 2, 1).reshape(-1, w.shape[1])

    state = {
        "model.embed_tokens.weight": params["embed.W_E"],
        "model.norm.weight": params["ln_final.w"],
        "lm_head.weight": params["unembed.W_U"].T,
        "lm_head.bias": params["unembed.b_U"],
    }
    for l in range(n_layers):
        a, p = f"blocks.{l}.attn.", f"model.layers.{l}."
        state[p + "input_layernorm.weight"] = params[f"blocks.{l}.ln1.w"]
        state[p + "self_attn.q_proj.weight"] = heads_out(params[a + "W_Q"])
        state[p + "self_attn.q_proj.bias"] = params[a + "b_Q"].reshape(-1)
        for name in ("K", "V"):
            w = params.get(a + f"_W_{name}", params.get(a + f"W_{name}"))
            b = params.get(a + f"_b_{name}", params.get(a + f"b_{name}"))
            state[p + f"self_attn.{name.lower()}_proj.weight"] = heads_out(w)
            state[p + f"self_attn.{name.lower()}_proj.bias"] = b.reshape(-1)
        w_o = params[a + "W_O"]  # [head, d_head, d_model]
        state[p + "self_attn.o_proj.weight"] = w_o.reshape(-1, w_o.shape[-1]).T
        state[p + "self_attn.o_proj.bias"] = params[a + "b_O"]
    return {k: v.contiguous() for k, v in state.items()}


def load_demo_bridge(
    config: Path, weights: Path, tokenizer_file: Path, *, device: str | None = None
) -> Any:
    """The demo model as a ``TransformerBridge`` in compatibility mode, offline."""
    from safetensors.torch import load_file
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformers import LlamaForCausalLM

    from focuslens.demo._tokenizer import load_tokenizer

    cfg = json.loads(Path(config).read_text())
    tokenizer = load_tokenizer(tokenizer_file)
    hf_config = llama_config(cfg, tokenizer)
    hf_config._attn_implementation = "eager"
    model = LlamaForCausalLM(hf_config)
    model.lm_head = torch.nn.Linear(cfg["d_model"], cfg["d_vocab"], bias=True)
    state = llama_state(load_file(str(weights)), cfg["n_layers"])
    for l in range(cfg["n_layers"]):  # no MLP: a zero down-projection adds exactly 0
        mlp = f"model.layers.{l}.mlp."
        state[mlp + "down_proj.weight"] = torch.zeros(cfg["d_model"], 1)
        state[mlp + "gate_proj.weight"] = torch.zeros(1, cfg["d_model"])
        state[mlp + "up_proj.weight"] = torch.zeros(1, cfg["d_model"])
        state[f"model.layers.{l}.post_attention_layernorm.weight"] = torch.ones(cfg["d_model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    rotary = [k for k in missing if "rotary" in k]
    if unexpected or set(missing) - set(rotary):
        raise ValueError(f"demo weights do not fit the Llama: {missing}, {unexpected}")
    model.eval()
    if device is not None:
        model = model.to(device)
    bridge = build_bridge_from_module(
        model, "LlamaForCausalLM", hf_config=hf_config, tokenizer=tokenizer, device=device
    )
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.cfg.model_name = cfg.get("model_name", "focuslens-demo")
    return bridge.eval()


__all__ = ["llama_config", "llama_state", "load_demo_bridge"]
