"""Benchmark: the cost of steering during generation, and the per-layer learning shortcut.

1. Greedy generation (KV cache, a fixed number of new tokens) with and without focus
   direction steering, on the demo model and on a random GPT-2-small-shaped model, for each form (``qk``: add to queries and keys; ``scores``: the
   logit bias at ``hook_attn_scores``), ``positions="generated"`` and ``alpha="auto"``
   (which adds a calibration of a few partial forward passes per prompt). Conditions
   are interleaved and repeated; the ratio is median(steered) / median(baseline) in the
   same run; also min / min and the median of the ratios of each round's runs
   ("paired", which cancels slow drifts of the machine's speed). Target for the plain
   steer: <= 1.05.
2. Learning focus directions: each layer trained on its cached attention input, only
   that attention layer running (focuslens's way), against a whole-model forward and
   backward per step for the same examples, seed and steps. Prints the speed-up and the
   largest difference between the two results (they compute the same thing).

Run: ``python benchmarks/bench_steering.py`` (the demo model when it is shipped, else
tiny random models; ``--quick`` for a smoke run). Threads default to 1 so that other
processes on a shared machine disturb the ratios less.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from focuslens.directions import FocusDirections, ModelShape  # noqa: E402
from focuslens.directions.inputs import batch_rows, cache_queries_keys, pad_inputs  # noqa: E402
from focuslens.directions.learn import cached_batch_mass, train_layer  # noqa: E402
from focuslens.model.generation import generate_greedy  # noqa: E402
from focuslens.scores.reduce import prepare, span_mass  # noqa: E402


def demo_or_tiny(n_layers: int | None = None) -> tuple[Any, str]:
    """The shipped demo model if present (and no layer count is asked), else a tiny one."""
    if n_layers is None:
        try:
            from focuslens.demo import load_demo_model

            return load_demo_model(), "demo"
        except (FileNotFoundError, ImportError):
            pass
    from _tiny import tiny_model

    layers = n_layers or 2
    return tiny_model("rotary", n_layers=layers, n_heads=4, d_head=16, n_ctx=512), f"tiny-{layers}L"


def gpt2_small_shaped() -> tuple[Any, str]:
    """A random rotary model of GPT-2 small's shape with the demo model's tokenizer (so the
    synthetic prompts apply): per-step overhead of the hooks against a realistic step."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from focuslens.demo import load_demo_model

    tokenizer = load_demo_model().tokenizer
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=len(tokenizer),
        n_ctx=2048, act_fn="gelu", normalization_type="LN",
        positional_embedding_type="rotary", rotary_dim=64, default_prepend_bos=True, seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    model.set_tokenizer(tokenizer)
    return model.eval(), "gpt2-small-shaped"


def prompts_for(model: Any, name: str, n: int, n_docs: int) -> list[Any]:
    if name in ("demo", "gpt2-small-shaped"):
        from focuslens.tasks import synthetic_retrieval

        return synthetic_retrieval(n, n_documents=n_docs, seed=1)
    from _tiny import random_text

    from focuslens import LabeledPrompt

    rng = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        docs = [("w1", random_text(rng, 4)) for _ in range(n_docs)]
        out.append(
            LabeledPrompt.from_documents(
                "w7 w8", docs, i % n_docs, ["x"], instruction="w9", response=random_text(rng, 2)
            )
        )
    return out


def random_directions(model: Any) -> FocusDirections:
    shape = ModelShape.of(model)
    g = torch.Generator().manual_seed(0)
    size = (shape.n_layers, shape.n_heads, shape.d_head)
    heads = [(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]
    grid = lambda value: [[value] * shape.n_heads] * shape.n_layers  # noqa: E731
    # The rule as learning records it: calibrate on the row of the 2nd generated token,
    # climb the grid towards a target never reached (the most passes it can take).
    table = {
        "statistic": "focus",
        "window": 5,
        "sink": 1,
        "search": "climb",
        "table": grid(0.999),
        "tables": [grid(0.999)] * 3,
        "relevant": [grid(0.1), grid(0.2), grid(0.5)],
        "query_norm": [grid(4.0)] * 3,
    }
    return FocusDirections(
        torch.randn(size, generator=g) * 0.3,
        torch.randn(size, generator=g) * 0.05,
        shape,
        heads=heads,
        training={"auto": table},
    )


# ---------------------------------------------------------------------------- generation
def bench_generation(args: argparse.Namespace, large: bool = False) -> None:
    from focuslens.prompts.tokens import tokenize_prompt

    model, name = gpt2_small_shaped() if large else demo_or_tiny()
    prompt = prompts_for(model, name, 1, args.docs)[0]
    tp = tokenize_prompt(model, prompt)
    tokens = tp.tokens[: tp.n_prompt]
    fd = random_directions(model)
    heads = fd.heads[: args.k]
    conditions = {
        "baseline": None,
        "steer qk": dict(form="qk"),
        "steer scores": dict(form="scores"),
        "steer qk, generated rows": dict(form="qk", positions="generated", n_prompt=tp.n_prompt),
        "steer auto (incl. calibration)": dict(alpha="auto", prompt_tokens=[tokens]),
    }

    def run(cond: dict | None) -> float:
        start = time.perf_counter()
        if cond is None:
            generate_greedy(
                model, tokens, max_new_tokens=args.new_tokens, stop_ids=(), stop_strings=None
            )
        else:
            kw = dict(cond)
            alpha = kw.pop("alpha", 0.5)
            with fd.steer(model, heads, alpha, **kw):
                generate_greedy(
                    model, tokens, max_new_tokens=args.new_tokens, stop_ids=(), stop_strings=None
                )
        return time.perf_counter() - start

    for cond in conditions.values():  # warm-up
        run(cond)
    times: dict[str, list[float]] = {k: [] for k in conditions}
    for _ in range(args.repeats):
        for key, cond in conditions.items():
            times[key].append(run(cond))
    base = statistics.median(times["baseline"])
    base_min = min(times["baseline"])
    print(
        f"\n## Generation ({name}, {tp.n_prompt}-token prompt, {args.new_tokens} new tokens, "
        f"{len(heads)} heads, median of {args.repeats})"
    )
    print(f"{'condition':34s} {'seconds':>9s} {'ratio':>7s} {'min ratio':>9s} {'paired':>7s}")
    for key, values in times.items():
        med = statistics.median(values)
        paired = statistics.median(v / b for v, b in zip(values, times["baseline"]))
        print(f"{key:34s} {med:9.4f} {med / base:7.3f} {min(values) / base_min:9.3f} {paired:7.3f}")


# ---------------------------------------------------------------------------- learning
def whole_model_batch_mass(model: Any, layer: int, tps: list[Any], query: str):
    """The naive way: the whole model runs forward (and backward) for every step."""
    pad = model.tokenizer.pad_token_id or 0
    rot = model.cfg.positional_embedding_type == "rotary"
    group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    device = next(model.parameters()).device

    def mass(idx: list[int], d_q: torch.Tensor, d_k: torch.Tensor) -> torch.Tensor:
        tokens = pad_inputs([tps[i].tokens for i in idx], pad).long().to(device)
        rows = batch_rows([tps[i] for i in idx], query, tokens.shape[1])
        out = {}

        def read(pattern: torch.Tensor, hook: Any) -> None:
            out["mass"] = span_mass(pattern, *rows)[..., 0]

        fwd = [
            (f"blocks.{layer}.attn.hook_{'rot_' if rot else ''}q", lambda q, hook: q + d_q),
            (
                f"blocks.{layer}.attn.hook_{'rot_' if rot else ''}k",
                lambda k, hook: k + d_k.reshape(-1, group, d_k.shape[-1]).mean(1),
            ),
            (f"blocks.{layer}.attn.hook_pattern", read),
        ]
        with model.hooks(fwd_hooks=fwd):
            model(tokens, return_type="logits")
        return out["mass"]

    return mass


def bench_learning(args: argparse.Namespace, n_layers: int | None) -> None:
    model, name = demo_or_tiny(n_layers)
    prompts = prompts_for(model, name, args.n_learn, args.docs)
    if name == "demo":  # synthetic prompts carry their gold response
        prompts = [p for p in prompts if p.relevant is not None]
    tps = prepare(model, prompts, query="response", sink=0)
    layers = list(range(model.cfg.n_layers))
    settings = dict(epochs=args.epochs, lr=1e-3, weight_decay=0.01, batch_size=1, init_std=0.01)

    def run(shortcut: bool) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        cache = cache_queries_keys(model, tps, layers) if shortcut else None
        out = []
        for layer in layers:
            if shortcut:
                mass = cached_batch_mass(model, layer, cache[layer], tps, "response")
            else:
                mass = whole_model_batch_mass(model, layer, tps, "response")
            out.append(train_layer(model, mass, len(tps), settings, gen)[0])
        return time.perf_counter() - start, torch.stack(out)

    fast_t, fast_d = run(True)
    slow_t, slow_d = run(False)
    print(
        f"\n## Learning ({name}: {model.cfg.n_layers} layers, {len(tps)} prompts of "
        f"{len(tps[0])} tokens, {args.epochs} epoch(s), batch 1)"
    )
    print(f"per-layer, cached inputs : {fast_t:8.2f} s (caching included)")
    print(f"whole model per step     : {slow_t:8.2f} s")
    print(f"speed-up                 : {slow_t / fast_t:8.2f}x")
    print(f"max |d_q difference|     : {float((fast_d - slow_d).abs().max()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=48, help="documents per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--k", type=int, default=4, help="steered heads")
    parser.add_argument("--n-learn", type=int, default=16, help="prompts for the learning part")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--deep", type=int, default=8, help="layers of the deeper tiny model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.new_tokens, args.repeats, args.n_learn, args.deep = 8, 4, 2, 3, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        bench_generation(args)
        if not args.quick:
            bench_generation(args, large=True)
    bench_learning(args, None)
    bench_learning(args, args.deep)


if __name__ == "__main__":
    main()
