"""Train the demo model, deterministically, on CPU.

    python -m focuslens.demo.train --out focuslens/demo

Task: the synthetic key-value retrieval of :mod:`focuslens.tasks.synthetic` in its
training form: a sequence holds 2-12 documents ``[DOC k k v v ]`` and then several
queries ``[Q k k`` each followed by its answer ``v v <eos>`` (or ``NONE <eos>`` for
an absent key). The loss is the cross-entropy of the answer tokens and their EOS only.
Some keys share a word with another key in the same sequence, and some absent keys
share a word with a present one, so the model must match whole keys.

Model: a 2-layer attention-only rotary HookedTransformer with RMSNorm, grouped-query
attention and BOS prepended (so an attention sink can form). Writes
``model.safetensors``, ``config.json``, ``tokenizer.json``, ``training.json`` and
``MODEL_CARD.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from focuslens.demo._fast import fast_logits
from focuslens.tasks import synthetic as syn

TOKEN_ID = {w: i for i, w in enumerate(syn.VOCAB)}
KEY_IDS = [TOKEN_ID[w] for w in syn.KEY_WORDS]
VALUE_IDS = [TOKEN_ID[w] for w in syn.VALUE_WORDS]

MODEL_CONFIG = {
    "n_layers": 2,
    "d_model": 128,
    "n_heads": 4,
    "d_head": 32,
    "n_key_value_heads": 2,
    "attn_only": True,
    "act_fn": None,
    "normalization_type": "RMS",
    "positional_embedding_type": "rotary",
    "rotary_dim": 32,
    "rotary_base": 10000,
    "n_ctx": 2048,
    "d_vocab": len(syn.VOCAB),
    "default_prepend_bos": True,
    "model_name": "focuslens-demo",
    "original_architecture": "focuslens-demo",
}
"""Arguments of the demo model's ``HookedTransformerConfig`` (also ``config.json``)."""


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters (recorded in ``training.json`` and the card)."""

    seed: int = 0
    steps: int = 2500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    min_docs: int = 2
    max_docs: int = 12
    queries: int = 4
    absent: float = 0.25
    max_share: float = 0.5
    near_miss: float = 0.5
    threads: int = 1


def _key(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.choice(KEY_IDS) for _ in range(syn.KEY_LEN))


def _near(rng: random.Random, base: tuple[int, ...]) -> tuple[int, ...]:
    """A random key that keeps one word of ``base`` at the same place."""
    key = list(_key(rng))
    slot = rng.randrange(syn.KEY_LEN)
    key[slot] = base[slot]
    return tuple(key)


def sample_sequence(rng: random.Random, r: Recipe, n: int) -> tuple[list[int], list[int]]:
    """One training sequence with ``n`` documents, and the positions of its target tokens
    (answers and EOS)."""
    share = rng.random() * r.max_share
    keys: list[tuple[int, ...]] = []
    while len(keys) < n:
        key = _near(rng, rng.choice(keys)) if keys and rng.random() < share else _key(rng)
        if key not in keys:
            keys.append(key)
    if n > syn.UNIQUE_VALUE_DOCS:
        raise ValueError(f"training uses at most {syn.UNIQUE_VALUE_DOCS} documents, got {n}")
    words = rng.sample(VALUE_IDS, n * syn.VALUE_LEN)
    values = [tuple(words[i : i + syn.VALUE_LEN]) for i in range(0, len(words), syn.VALUE_LEN)]
    ids = [TOKEN_ID[syn.BOS]]
    for k, v in zip(keys, values):
        ids += [TOKEN_ID[syn.DOC_OPEN], *k, *v, TOKEN_ID[syn.DOC_CLOSE]]
    unasked = list(range(n))
    rng.shuffle(unasked)
    asked: set[tuple[int, ...]] = set()
    targets: list[int] = []
    for _ in range(r.queries):
        if unasked and rng.random() >= r.absent:
            doc = unasked.pop()
            query, answer = keys[doc], list(values[doc])
        else:
            while True:
                query = _near(rng, rng.choice(keys)) if rng.random() < r.near_miss else _key(rng)
                if query not in keys and query not in asked:
                    break
            answer = [TOKEN_ID[syn.NONE]]
        asked.add(query)
        ids += [TOKEN_ID[syn.QUERY], *query]
        targets += range(len(ids), len(ids) + len(answer) + 1)
        ids += [*answer, TOKEN_ID[syn.EOS]]
    return ids, targets


def sample_batch(rng: random.Random, r: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[batch, pos]`` (right-padded) and a target mask ``[batch, pos]``.

    All sequences of a batch have the same number of documents (drawn uniformly from
    ``[min_docs, max_docs]``), which keeps padding small.
    """
    n = rng.randint(r.min_docs, r.max_docs)
    seqs = [sample_sequence(rng, r, n) for _ in range(r.batch_size)]
    length = max(len(ids) for ids, _ in seqs)
    tokens = torch.full((r.batch_size, length), TOKEN_ID[syn.PAD], dtype=torch.long)
    mask = torch.zeros((r.batch_size, length), dtype=torch.bool)
    for b, (ids, targets) in enumerate(seqs):
        tokens[b, : len(ids)] = torch.tensor(ids)
        mask[b, targets] = True
    return tokens, mask


def build_model(seed: int):
    """A freshly initialised demo model (no tokenizer)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**MODEL_CONFIG, seed=seed, device="cpu")
    return HookedTransformer(cfg)


def lr_at(step: int, r: Recipe) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction * lr``."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (
        r.final_lr_fraction + (1 - r.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))
    )


def train(r: Recipe, log_every: int = 100) -> tuple[torch.nn.Module, list[dict]]:
    """Train a demo model with recipe ``r``; returns it and the loss log."""
    torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)
    torch.use_deterministic_algorithms(True)
    model = build_model(r.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    rng = random.Random(f"focuslens.demo.train:{r.seed}")
    log, running = [], 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(r.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        tokens, mask = sample_batch(rng, r)
        logits = fast_logits(model, tokens[:, :-1], at=mask[:, 1:])
        loss = torch.nn.functional.cross_entropy(logits, tokens[:, 1:][mask[:, 1:]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == r.steps:
            entry = {
                "step": step + 1,
                "loss": running / ((step % log_every) + 1),
                "seconds": round(time.perf_counter() - start, 1),
                "cpu_seconds": round(time.process_time() - cpu_start, 1),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
            running = 0.0
    check_fast_forward(model, r)
    return model, log


def check_fast_forward(model, r: Recipe, atol: float = 1e-3) -> float:
    """Check that the training forward (:func:`fast_logits`) equals ``model(tokens)``."""
    tokens, _ = sample_batch(random.Random("focuslens.demo.check"), r)
    with torch.no_grad():
        diff = float((fast_logits(model, tokens) - model(tokens)).abs().max())
    if diff > atol:
        raise RuntimeError(f"fast_logits differs from HookedTransformer.forward by {diff:.2e}")
    return diff


def save(model, out: Path, r: Recipe, log: list[dict]) -> None:
    """Write weights (parameters only), config, tokenizer and the training record."""
    from safetensors.torch import save_file

    from focuslens.demo._tokenizer import build_tokenizer_json

    out.mkdir(parents=True, exist_ok=True)
    params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(params, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(MODEL_CONFIG, indent=2) + "\n")
    build_tokenizer_json(out / "tokenizer.json")
    record = {
        "recipe": asdict(r),
        "train_seconds": log[-1]["seconds"] if log else None,
        "train_cpu_seconds": log[-1]["cpu_seconds"] if log else None,
        "log": log,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    for name, default in asdict(Recipe()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--no-card", action="store_true", help="skip writing MODEL_CARD.md")
    args = parser.parse_args(argv)
    r = Recipe(**{k: getattr(args, k) for k in asdict(Recipe())})
    model, log = train(r)
    save(model, args.out, r, log)
    if not args.no_card:
        from focuslens.demo.card import write_card

        write_card(args.out)


if __name__ == "__main__":
    main()
