"""The demo model's word-level tokenizer (built by ``train.py``, loaded by ``load_demo_model``)."""

from __future__ import annotations

from pathlib import Path

from focuslens.tasks.synthetic import BOS, EOS, PAD, SPECIAL_TOKENS, UNK, VOCAB


def build_tokenizer_json(path: str | Path) -> None:
    """Write ``tokenizer.json``: word level over :data:`VOCAB`, split on whitespace.

    The pre-tokenizer splits on whitespace only (``WhitespaceSplit``), so each word of a
    synthetic prompt is one token and its character offsets are exact.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path))


def load_tokenizer(path: str | Path):
    """A ``PreTrainedTokenizerFast`` over ``tokenizer.json`` with BOS, EOS, pad and unk set.

    ``add_bos_token`` is recorded as true so that TransformerLens's ``set_tokenizer``
    keeps this object instead of reloading it by name; encoding does not add BOS itself
    (the post-processor is empty), ``model.to_tokens`` prepends it.
    """
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        name_or_path="focuslens-demo",
        add_bos_token=True,
        model_max_length=2048,
    )
    return tok
