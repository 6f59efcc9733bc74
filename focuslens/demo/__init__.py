"""The shipped demo model: a tiny rotary transformer trained on synthetic retrieval.

It reads prompts of :func:`focuslens.tasks.synthetic_retrieval` (documents
``[DOC k k v v ]``, then a query ``[Q k k``) and answers by repeating the key, then
giving the value and ``<eos>`` (``k k NONE`` when the key is absent). Trained on 1-48
documents, it is accurate with a few and distracted by many: at
:data:`DISTRACTING_DOCS` documents, inside its training range, about 4 answers in 10
are wrong, half of them ``NONE``. See ``MODEL_CARD.md`` in this folder for the
architecture, training, measurements and what the method does on it, and ``train.py``
for the script that made it.

Example:
    >>> from focuslens.demo import load_demo_model
    >>> model = load_demo_model()
    >>> model.cfg.n_layers, model.tokenizer.eos_token
    (3, '<eos>')
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DIR = Path(__file__).parent
"""The folder holding the demo model's files."""

DISTRACTING_DOCS = 40
"""Number of documents at which the demo model is distracted (accuracy 0.62 against 0.99
with 4 documents; see the card). Inside its training range (1-48 documents)."""


BACKENDS = ("hooked", "bridge")
"""How the demo model can be loaded: a ``HookedTransformer`` (transformer-lens 3.x) or a
``TransformerBridge`` around an equivalent Hugging Face Llama (3.9 and 4.x)."""


def load_demo_model(
    path: str | Path | None = None, *, device: str | None = None, backend: str | None = None
):
    """Load the demo model offline, with its tokenizer set.

    Args:
        path: Folder with ``config.json``, ``model.safetensors`` and ``tokenizer.json``;
            defaults to the shipped model.
        device: Torch device; ``None`` lets TransformerLens choose.
        backend: ``"hooked"`` (a ``HookedTransformer``), ``"bridge"`` (a
            ``TransformerBridge``, :mod:`focuslens.demo.bridge`) or None: hooked where
            this transformer-lens has it (3.x), else bridge.

    Returns:
        The model in eval mode. ``model.to_tokens(text)`` prepends ``<bos>``;
        ``model.tokenizer.eos_token`` is ``"<eos>"``, the end-of-answer marker.
    """
    if backend is None:
        try:  # a capability check: transformer-lens 4.x has no HookedTransformer
            from transformer_lens import HookedTransformer  # noqa: F401

            backend = "hooked"
        except ImportError:
            backend = "bridge"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    folder = Path(path) if path is not None else DEMO_DIR
    files = [folder / n for n in ("config.json", "model.safetensors", "tokenizer.json")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"demo model files missing: {missing}; train it with "
            f"`python -m focuslens.demo.train --out {folder}`"
        )
    if backend == "bridge":
        from focuslens.demo.bridge import load_demo_bridge

        return load_demo_bridge(*files, device=device)
    return _load_hooked(files, device)


def _load_hooked(files: list[Path], device: str | None):
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from focuslens.demo._tokenizer import load_tokenizer

    cfg = HookedTransformerConfig(**json.loads(files[0].read_text()), device=device)
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(files[2]))
    state = model.state_dict()
    params = load_file(str(files[1]))
    unknown = sorted(set(params) - set(state))
    if unknown:
        raise ValueError(f"{files[1]} has tensors the model does not: {unknown}")
    state.update(params)
    model.load_state_dict(state)
    return model.eval()


__all__ = ["BACKENDS", "DEMO_DIR", "DISTRACTING_DOCS", "load_demo_model"]
