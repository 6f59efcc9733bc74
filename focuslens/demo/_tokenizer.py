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

    ``add_bos_token=True``: ``tokenizer(text)`` prepends ``<bos>`` (offsets ``(0, 0)``)
    unless ``add_special_tokens=False``. TransformerLens's ``set_tokenizer`` then keeps
    this object (it would otherwise try to reload the tokenizer by name, which needs the
    Hugging Face Hub) and ``model.to_tokens`` relies on it for the BOS, which gives the
    same tokens as :func:`focuslens.tokenize_prompt`.
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
