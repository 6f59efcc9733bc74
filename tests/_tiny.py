"""Builders for tiny seeded models and offline tokenizers, shared by the tests.

Everything here is made in memory or in a temporary folder: no download.
"""

from __future__ import annotations

import functools
import string
import tempfile
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(120)]
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
PUNCT = ["[", "]", "(", ")", ":", ".", ",", "?", "Document", "Title", "Question", "Answer"]


def _saved(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Round-trip through a folder: TransformerLens's ``set_tokenizer`` reloads a tokenizer
    from its ``name_or_path``, so in-memory tokenizers need one."""
    folder = tempfile.mkdtemp(prefix="focuslens-tok-")
    tok.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


@functools.cache
def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: whitespace split, exact character offsets."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + PUNCT + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _saved(
        PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
        )
    )


@functools.cache
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained offline: tokens straddle word boundaries
    (leading spaces belong to the next word), as GPT-2's do."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "Document [1](Title: Paris) Paris is the capital of France.",
        "Question: who wrote the play? Answer: the author wrote it.",
        string.ascii_lowercase * 3,
        "the quick brown fox jumps over the lazy dog " * 5,
    ]
    tok.train_from_iterator(corpus, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return _saved(
        PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
    )


def tiny_model(
    kind: str = "rotary",
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    d_head: int = 8,
    n_ctx: int = 256,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Any:
    """A seeded random HookedTransformer (transformer-lens 3.x only: the caller's test is
    skipped under 4.x by the capability check in ``conftest.py``).

    kind: ``"gpt2"`` (learned absolute positions, LayerNorm), ``"rotary"`` (RMSNorm,
    rotary), ``"gqa"`` (rotary with 2 key/value heads) or ``"local"`` (rotary, layer 0
    local: a sliding window of 3 positions).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = tokenizer or word_tokenizer()
    common = dict(
        n_layers=n_layers,
        d_model=n_heads * d_head,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=4 * n_heads * d_head,
        d_vocab=len(tok),
        n_ctx=n_ctx,
        act_fn="gelu",
        seed=seed,
        default_prepend_bos=True,
    )
    if kind == "gpt2":
        cfg = HookedTransformerConfig(
            **common, normalization_type="LN", positional_embedding_type="standard"
        )
    elif kind in ("rotary", "gqa", "local"):
        local = (
            dict(use_local_attn=True, attn_types=["local"] + ["global"] * (n_layers - 1))
            if kind == "local"
            else {}
        )
        cfg = HookedTransformerConfig(
            **common,
            **local,
            window_size=3 if local else None,
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            n_key_value_heads=2 if kind == "gqa" else None,
        )
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    model = HookedTransformer(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                # Larger weights than the default init give peaked, non-uniform attention.
                param.normal_(0, 0.5 if ".attn." in name else 0.2)
    model.set_tokenizer(tok)
    model.eval()
    return model


def random_text(rng: torch.Generator, n_words: int) -> str:
    idx = torch.randint(len(WORDS), (n_words,), generator=rng).tolist()
    return " ".join(WORDS[i] for i in idx)


def labeled_prompts(n: int, *, seed: int = 0, n_docs: int = 4, response: bool = True) -> list:
    """``n`` word-tokenizer prompts of different lengths and gold positions, each with a
    teacher-forced response of 1-3 words (or none), which is also the gold answer."""
    from focuslens.prompts.spans import LabeledPrompt

    rng = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        docs = [("w1", random_text(rng, 2 + (i + d) % 5)) for d in range(n_docs + i % 3)]
        gold = i % len(docs)
        answer = random_text(rng, 1 + i % 3)
        prompts.append(
            LabeledPrompt.from_documents(
                "w7 w8",
                docs,
                gold,
                [answer],
                instruction="w9 w10",
                response=answer if response else None,
            )
        )
    return prompts


def save_model_folder(model: Any, folder) -> None:
    """Write ``model`` as a focuslens model folder (``config.json``, ``model.safetensors``,
    ``tokenizer.json``, the layout of the demo model), loadable by ``--model FOLDER``."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = ["n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn",
            "normalization_type", "positional_embedding_type", "rotary_dim",
            "n_key_value_heads", "default_prepend_bos", "model_name"]  # fmt: skip
    config = {k: getattr(model.cfg, k) for k in keys}
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    model.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))


def demo_model_missing() -> str | None:
    """Why the shipped demo model cannot be loaded here, or None when it can."""
    try:
        from focuslens.demo import load_demo_model

        load_demo_model()
    except Exception as exc:  # noqa: BLE001 - any reason means: no demo model here
        return f"{type(exc).__name__}: {exc}"
    return None
