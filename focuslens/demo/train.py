"""Train the demo model, deterministically, on CPU.

    python -m focuslens.demo.train --out focuslens/demo

Task: the synthetic key-value retrieval of :mod:`focuslens.tasks.synthetic` in its
training form: a sequence holds documents ``[DOC k k v v ]`` and then several queries
``[Q k k``, each followed by its answer and ``<eos>``. The loss is the cross-entropy of
the answer tokens and their EOS only. Some keys share a word with another key in the
same sequence, and some absent keys share a word with a present one, so the model must
match whole keys.

A curriculum of two stages (:data:`RETRIEVAL`, then :data:`ANSWER`):

1. retrieval on short prompts (2-12 documents), answering with the value directly
   (``v v <eos>`` or ``NONE <eos>``): at this scale the model learns retrieval in this
   form and not in the echo form from scratch;
2. the shipped answer format, which repeats the key before the value
   (``k k v v <eos>``, ``k k NONE <eos>``), on 1-48 documents, so that the prompts the
   demo is evaluated on are as long as the training ones: the model is distracted by
   the number of competing documents, not by distances it never saw. Half of the
   queries are absent keys, most of them sharing a word with a present key, which
   makes ``NONE`` the model's answer when it is unsure (under-commitment).

Model: a 3-layer x 8-head attention-only rotary HookedTransformer with RMSNorm,
grouped-query attention (4 key/value heads) and BOS prepended (so an attention sink
can form). Writes ``model.safetensors``, ``config.json``, ``tokenizer.json``,
``training.json`` and ``MODEL_CARD.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from focuslens.demo._fast import fast_logits
from focuslens.tasks import synthetic as syn

TOKEN_ID = {w: i for i, w in enumerate(syn.VOCAB)}
KEY_IDS = [TOKEN_ID[w] for w in syn.KEY_WORDS]
VALUE_IDS = [TOKEN_ID[w] for w in syn.VALUE_WORDS]

MODEL_CONFIG = {
    "n_layers": 3,
    "d_model": 128,
    "n_heads": 8,
    "d_head": 16,
    "n_key_value_heads": 4,
    "attn_only": True,
    "act_fn": None,
    "normalization_type": "RMS",
    "positional_embedding_type": "rotary",
    "rotary_dim": 16,
    "rotary_base": 10000,
    "n_ctx": 2048,
    "d_vocab": len(syn.VOCAB),
    "default_prepend_bos": True,
    "model_name": "focuslens-demo",
    "original_architecture": "focuslens-demo",
}
"""Arguments of the demo model's ``HookedTransformerConfig`` (also ``config.json``)."""


@dataclass(frozen=True)
class Stage:
    """One stage of the training curriculum."""

    steps: int
    lr: float
    warmup: int
    min_docs: int
    max_docs: int
    absent: float
    echo: bool
    """Answers start with the echoed query key (``[Q k k`` -> ``k k v v <eos>``)."""
    near_miss: float = 0.5
    """Fraction of absent keys that share one word with a present key."""
    head_l1: float = 0.0
    """Weight of a group-lasso penalty on each head's output matrix ``W_O`` (sum of the
    heads' Frobenius norms): it makes few heads carry the retrieval, as in pretrained
    models, instead of every head of the last layer."""
    context_loss: float = 0.0
    """Weight of a next-token loss on every other token of the sequence (documents and
    queries): every head then has work at every row, as in a language model."""


RETRIEVAL = Stage(steps=2500, lr=2e-3, warmup=100, min_docs=2, max_docs=12, absent=0.25, echo=False)
"""Stage 1: learn retrieval on short prompts, answering with the value directly."""

ANSWER = Stage(
    steps=1200,
    lr=1e-3,
    warmup=50,
    min_docs=1,
    max_docs=48,
    absent=0.5,
    echo=True,
    near_miss=0.9,
    head_l1=0.002,
    context_loss=0.3,
)
"""Stage 2: the shipped answer format (echoed key, then the value) on prompts as long as
the ones the demo is evaluated on."""


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters (recorded in ``training.json`` and the card)."""

    seed: int = 0
    batch_size: int = 64
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    queries: int = 4
    max_share: float = 0.5
    threads: int = 1
    stages: tuple[Stage, ...] = (RETRIEVAL, ANSWER)


def _key(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.choice(KEY_IDS) for _ in range(syn.KEY_LEN))


def _near(rng: random.Random, base: tuple[int, ...]) -> tuple[int, ...]:
    """A random key that keeps one word of ``base`` at the same place."""
    key = list(_key(rng))
    slot = rng.randrange(syn.KEY_LEN)
    key[slot] = base[slot]
    return tuple(key)


def _values(rng: random.Random, n: int) -> list[tuple[int, ...]]:
    """``n`` distinct values; no word repeats up to ``UNIQUE_VALUE_DOCS`` documents (as in
    :func:`focuslens.tasks.synthetic.distinct_values`)."""
    if n <= syn.UNIQUE_VALUE_DOCS:
        words = rng.sample(VALUE_IDS, n * syn.VALUE_LEN)
        return [tuple(words[i : i + syn.VALUE_LEN]) for i in range(0, len(words), syn.VALUE_LEN)]
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        value = tuple(rng.choice(VALUE_IDS) for _ in range(syn.VALUE_LEN))
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def sample_sequence(
    rng: random.Random, r: Recipe, n: int, stage: Stage = ANSWER
) -> tuple[list[int], list[int]]:
    """One training sequence with ``n`` documents, and the positions of its target tokens
    (the answers, echoed keys included in the echo format, and EOS)."""
    share = rng.random() * r.max_share
    keys: list[tuple[int, ...]] = []
    while len(keys) < n:
        key = _near(rng, rng.choice(keys)) if keys and rng.random() < share else _key(rng)
        if key not in keys:
            keys.append(key)
    values = _values(rng, n)
    ids = [TOKEN_ID[syn.BOS]]
    for k, v in zip(keys, values):
        ids += [TOKEN_ID[syn.DOC_OPEN], *k, *v, TOKEN_ID[syn.DOC_CLOSE]]
    unasked = list(range(n))
    rng.shuffle(unasked)
    asked: set[tuple[int, ...]] = set()
    targets: list[int] = []
    for _ in range(r.queries):
        if unasked and rng.random() >= stage.absent:
            doc = unasked.pop()
            query, answer = keys[doc], list(values[doc])
        else:
            while True:
                query = (
                    _near(rng, rng.choice(keys)) if rng.random() < stage.near_miss else _key(rng)
                )
                if query not in keys and query not in asked:
                    break
            answer = [TOKEN_ID[syn.NONE]]
        asked.add(query)
        ids += [TOKEN_ID[syn.QUERY], *query]
        said = [*query, *answer] if stage.echo else answer
        targets += range(len(ids), len(ids) + len(said) + 1)
        ids += [*said, TOKEN_ID[syn.EOS]]
    return ids, targets


def sample_batch(
    rng: random.Random, r: Recipe, stage: Stage = ANSWER
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[batch, pos]`` (right-padded) and a target mask ``[batch, pos]``.

    All sequences of a batch have the same number of documents (drawn uniformly from
    ``[stage.min_docs, stage.max_docs]``), which keeps padding small.
    """
    n = rng.randint(stage.min_docs, stage.max_docs)
    seqs = [sample_sequence(rng, r, n, stage) for _ in range(r.batch_size)]
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


def head_norms(model) -> torch.Tensor:
    """Frobenius norm of each head's ``W_O``, ``[n_layers, n_heads]``."""
    return torch.stack([block.attn.W_O.flatten(1).norm(dim=-1) for block in model.blocks])


def lr_at(step: int, r: Recipe, stage: Stage) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction * lr``, within a stage."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    t = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (
        r.final_lr_fraction + (1 - r.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))
    )


def train(r: Recipe, log_every: int = 100, model=None) -> tuple[torch.nn.Module, list[dict]]:
    """Train a demo model with recipe ``r``; returns it and the loss log.

    Stage ``i`` draws its sequences from ``random.Random(f"focuslens.demo.train:{seed + i}")``
    and starts a fresh AdamW; ``model`` (default: a new one) is trained in place.
    """
    torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)
    torch.use_deterministic_algorithms(True)
    model = build_model(r.seed) if model is None else model.train()
    log: list[dict] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, stage in enumerate(r.stages):
        opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=r.weight_decay)
        rng = random.Random(f"focuslens.demo.train:{r.seed + i}")
        running = 0.0
        for step in range(stage.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, r, stage)
            tokens, mask = sample_batch(rng, r, stage)
            nxt, at = tokens[:, 1:], mask[:, 1:]
            if stage.context_loss:
                logits = fast_logits(model, tokens[:, :-1])
                rest = ~at & (nxt != TOKEN_ID[syn.PAD])
                answer_loss = torch.nn.functional.cross_entropy(logits[at], nxt[at])
                ctx = torch.nn.functional.cross_entropy(logits[rest], nxt[rest])
                loss = answer_loss + stage.context_loss * ctx
            else:
                logits = fast_logits(model, tokens[:, :-1], at=at)
                loss = answer_loss = torch.nn.functional.cross_entropy(logits, nxt[at])
            if stage.head_l1:
                loss = loss + stage.head_l1 * head_norms(model).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            running += answer_loss.item()
            if (step + 1) % log_every == 0 or step + 1 == stage.steps:
                entry = {
                    "stage": i + 1,
                    "step": step + 1,
                    "loss": running / ((step % log_every) + 1),  # answer tokens only
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
    tokens, _ = sample_batch(random.Random("focuslens.demo.check"), r, r.stages[-1])
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
        if name != "stages":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every stage's steps (smoke runs)"
    )
    parser.add_argument("--no-card", action="store_true", help="skip writing MODEL_CARD.md")
    args = parser.parse_args(argv)
    fields = {k: getattr(args, k) for k in asdict(Recipe()) if k != "stages"}
    stages = tuple(
        replace(s, steps=max(1, round(s.steps * args.steps_scale))) for s in Recipe().stages
    )
    r = Recipe(**fields, stages=stages)
    model, log = train(r)
    save(model, args.out, r, log)
    if not args.no_card:
        from focuslens.demo.card import write_card

        write_card(args.out)


if __name__ == "__main__":
    main()
