"""Offline stand-ins for notebook 04, used when it runs as a test (``SMOKE_TEST = True``).

Notebook 04 is written for a real model whose weights you download (GPT-2, Qwen, Llama)
and for the authors' released directions. The tests have neither, so they run it on
stand-ins built here, offline, in a temporary folder:

* :func:`tiny_model`: a small *random* ``HookedTransformer`` with the architecture of
  the Llama family (RMSNorm, rotary, grouped-query attention, gated MLP) and a
  byte-level BPE tokenizer trained on a few sentences, with a chat template;
* :func:`shaped_like`: the same with the attention shape of a model whose directions the
  authors released (so that the shipped directions fit it);
* :func:`fake_release`: files in the layout of the authors' release
  (``head_q_directions_{layer}.pth``, ``head_k_directions_{layer}.pth``, one pickled
  ``torch.nn.Parameter [n_heads, head_dim]`` each, and ``relevant_heads.json``), with
  random vectors of the stand-in model's shape.

A random model answers nothing correctly and its heads mean nothing; the stand-ins only
check that every cell of the notebook runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A minimal chat template for the stand-in tokenizer (role tags, one line each)."""

_CORPUS = [
    "Write a high-quality answer for the given question using only the provided search "
    "results (some of which might be irrelevant).",
    "Document [1](Title: Paris) Paris is the capital and largest city of France.",
    "Question: who wrote the play Hamlet? Answer: William Shakespeare wrote it.",
    "The quick brown fox jumps over the lazy dog. 0123456789 " * 3,
]


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def tiny_model(
    *,
    n_layers: int = 4,
    n_heads: int = 8,
    n_key_value_heads: int = 2,
    d_head: int = 16,
    d_model: int | None = None,
    seed: int = 0,
):
    """A small random ``HookedTransformer`` of the Llama family's architecture (RMSNorm,
    rotary embeddings, grouped-query attention, gated MLP), with a BPE tokenizer that
    has a chat template: what ``focuslens.model.loading.load_model("Qwen/...")`` gives, shrunk.
    ``d_model`` defaults to ``n_heads * d_head``.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    folder = Path(tempfile.mkdtemp(prefix="focuslens-nb04-tokenizer-"))
    _tokenizer(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)  # a tokenizer with a path
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model or n_heads * d_head,
        n_heads=n_heads,
        n_key_value_heads=n_key_value_heads,
        d_head=d_head,
        d_mlp=2 * (d_model or n_heads * d_head),
        gated_mlp=True,
        act_fn="silu",
        d_vocab=len(tok),
        n_ctx=2048,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        default_prepend_bos=True,
        seed=seed,
        model_name="tiny-random-llama",
    )
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:  # larger than the default init: peaked, distinct heads
                param.copy_(
                    torch.randn(param.shape, generator=gen) * (0.3 if ".attn." in name else 0.1)
                )
    model.set_tokenizer(tok)
    return model.eval()


def shaped_like(name: str, *, d_model: int = 32, seed: int = 0):
    """A :func:`tiny_model` with the attention shape of a released model (layers, query
    heads, key/value heads, head size) but a small width: a stand-in that the authors'
    released directions (``FocusDirections.pretrained(name, model)``) fit."""
    from focuslens.directions import FocusDirections

    shape = FocusDirections.pretrained(name).shape
    return tiny_model(
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        n_key_value_heads=shape.n_key_value_heads,
        d_head=shape.d_head,
        d_model=d_model,
        seed=seed,
    )


def fake_release(
    model,
    folder: str | Path | None = None,
    *,
    n_heads_listed: int = 20,
    seed: int = 0,
) -> Path:
    """Write random directions for ``model`` in the layout of the authors' release.

    Returns:
        The folder holding ``head_{q,k}_directions_{layer}.pth`` and
        ``relevant_heads.json`` (a random ranking of ``n_heads_listed`` heads).
    """
    folder = Path(folder or tempfile.mkdtemp(prefix="focuslens-nb04-release-"))
    folder.mkdir(parents=True, exist_ok=True)
    n_layers, n_heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    gen = torch.Generator().manual_seed(seed)
    for layer in range(n_layers):
        for kind, std in (("q", 2.4), ("k", 0.05)):  # the released tensors' typical scales
            d = torch.randn(n_heads, d_head, generator=gen) * std
            torch.save(torch.nn.Parameter(d), folder / f"head_{kind}_directions_{layer}.pth")
    order = torch.randperm(n_layers * n_heads, generator=gen)[:n_heads_listed].tolist()
    heads = [[i // n_heads, i % n_heads] for i in order]
    (folder / "relevant_heads.json").write_text(json.dumps(heads))
    return folder
