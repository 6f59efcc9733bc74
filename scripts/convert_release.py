"""Convert the authors' released focus directions into the files focuslens ships.

The paper's authors released, in their repository ``billzyx/focus_direction`` (commit
3595004, MIT licence), focus directions and ranked contextual heads for three models:
``head_features/<model>/direction_relevant/head_{q,k}_directions_<layer>.pth`` and
``contextual_heads_scores_full_seq/<model>/relevant_heads.json``. This script reads them
with ``FocusDirections.from_release`` (the same import, with all its checks, that users
run on a clone of the release) onto a random stand-in model of each model's attention
shape, and writes into ``focuslens/directions/released/``:

* ``<model>.safetensors`` (``FocusDirections.save``: float32 tensors, JSON metadata);
* ``<model>.heads.json``: the release's ``relevant_heads.json``, copied byte for byte;
* ``LICENSE``: the authors' licence, copied byte for byte, and ``README.md``: attribution.

The stand-in's shape is the real model's, from its Hugging Face ``config.json``
(``SHAPES`` below); ``from_release`` refuses files of any other shape.

    python scripts/convert_release.py --release path/to/focus_direction
    python scripts/convert_release.py --release path/to/focus_direction --check
    python scripts/convert_release.py --table   # the table of docs/howto/released-directions.md

``--check`` converts into a temporary folder and compares with the shipped files
(tensors, heads, licence), without writing anything; exit status 1 on a difference.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "focuslens" / "directions" / "released"

SHAPES = {
    # Hugging Face id: (num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim)
    "meta-llama/Llama-3.2-3B-Instruct": (28, 24, 8, 128),
    "Qwen/Qwen2.5-7B-Instruct": (28, 28, 4, 128),
    "mistralai/Ministral-8B-Instruct-2410": (36, 32, 8, 128),
}
"""The attention shapes of the released models, from their ``config.json``."""

COMMIT = "3595004"

README = """\
# The authors' released focus directions

Converted by `scripts/convert_release.py` from the public repository
`billzyx/focus_direction` (commit {commit}), which accompanies the paper *Focus
Directions Make Your Language Models Pay More Attention to Relevant Contexts* (arXiv
2503.23306). Copyright (c) 2025 Youxiang Zhu, MIT licence: see `LICENSE` here.

| Model | File | From |
| --- | --- | --- |
{rows}

The `.safetensors` files hold the released `head_q_directions_<layer>.pth` and
`head_k_directions_<layer>.pth` of every layer (float32, unchanged values), stacked to
`[n_layers, n_heads, head_dim]`, in focuslens's format; the `.heads.json` files are the
release's `relevant_heads.json`, byte for byte. Load them with
`focuslens.FocusDirections.pretrained(model_id)` and `focuslens.pretrained_heads(model_id)`.
"""


def stand_in(shape: tuple[int, int, int, int]):
    """A random rotary model with the attention shape of a released model (small width)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    n_layers, n_heads, n_kv, d_head = shape
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=16,
        n_heads=n_heads,
        n_key_value_heads=n_kv,
        d_head=d_head,
        d_vocab=8,
        n_ctx=8,
        attn_only=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        act_fn="silu",
        seed=0,
    )
    return HookedTransformer(cfg).eval()


def slug(name: str) -> str:
    return name.replace("/", "_")


def convert(release: Path, out: Path) -> list[str]:
    """Write the shipped files of every model into ``out``; returns the file names."""
    from focuslens.directions import FocusDirections

    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = []
    for name, shape in SHAPES.items():
        folder = release / "head_features" / slug(name) / "direction_relevant"
        heads_file = (
            release / "contextual_heads_scores_full_seq" / slug(name) / "relevant_heads.json"
        )
        fd = FocusDirections.from_release(folder, stand_in(shape), heads_file=heads_file)
        if len(fd.heads) != shape[0] * shape[1]:
            raise ValueError(f"{heads_file} ranks {len(fd.heads)} heads, expected every head")
        fd.meta = {
            "model": name,
            "source": f"billzyx/focus_direction@{COMMIT}",
            "files": f"head_features/{slug(name)}/direction_relevant/head_{{q,k}}_directions_*.pth",
            "heads_file": f"contextual_heads_scores_full_seq/{slug(name)}/relevant_heads.json",
            "licence": "MIT, Copyright (c) 2025 Youxiang Zhu (LICENSE beside this file)",
        }
        fd.save(out / f"{slug(name)}.safetensors")
        shutil.copyfile(heads_file, out / f"{slug(name)}.heads.json")
        written += [f"{slug(name)}.safetensors", f"{slug(name)}.heads.json"]
        rows.append(
            f"| `{name}` | `{slug(name)}.safetensors` | `head_features/{slug(name)}/direction_relevant/` |"
        )
    shutil.copyfile(release / "LICENSE", out / "LICENSE")
    (out / "README.md").write_text(README.format(commit=COMMIT, rows="\n".join(rows)))
    return [*written, "LICENSE", "README.md"]


def shipped_table() -> str:
    """The docs' table of the shipped directions: shape, top heads and norms, computed from
    the shipped files (``--table``; docs/howto/released-directions.md holds it)."""
    import focuslens
    from focuslens.directions import FocusDirections

    lines = [
        "| Model | Layers x heads (KV heads) | Top 5 heads | Mean norm of `d_q`, top 20 heads "
        "| Mean norm of `d_q`, all heads | Mean norm of `d_k`, all heads |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for name in SHAPES:
        fd = FocusDirections.pretrained(name)
        norms = fd.norms()
        top = focuslens.pretrained_heads(name)[:20]
        top_q = sum(float(norms["q"][layer, head]) for layer, head in top) / len(top)
        heads = ", ".join(f"L{layer}H{head}" for layer, head in top[:5])
        s = fd.shape
        lines.append(
            f"| `{name}` | {s.n_layers} x {s.n_heads} ({s.n_key_value_heads}) | {heads} | "
            f"{top_q:.1f} | {float(norms['q'].mean()):.1f} | {float(norms['k'].mean()):.2f} |"
        )
    return "\n".join(lines)


def differences(a: Path, b: Path, names: list[str]) -> list[str]:
    """What differs between the files ``names`` of two output folders."""
    from focuslens.directions import FocusDirections

    found = []
    for name in names:
        if not (b / name).is_file():
            found.append(f"{b / name} is missing")
        elif name.endswith(".safetensors"):
            x, y = FocusDirections.load(a / name), FocusDirections.load(b / name)
            same = (
                torch.equal(x.d_q, y.d_q)
                and torch.equal(x.d_k, y.d_k)
                and x.heads == y.heads
                and x.shape == y.shape
                and x.training == y.training
            )
            if not same:
                found.append(f"{name}: the directions differ")
        elif (a / name).read_bytes() != (b / name).read_bytes():
            found.append(f"{name}: the contents differ")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", type=Path, help="a clone of the release")
    parser.add_argument("--table", action="store_true", help="print the docs' table and exit")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(shipped_table())
        return 0
    if args.release is None:
        parser.error("--release is required (a clone of billzyx/focus_direction)")
    if not args.check:
        for name in convert(args.release, args.out):
            print(f"wrote {args.out / name} ({(args.out / name).stat().st_size:,} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        names = convert(args.release, Path(tmp))
        found = differences(Path(tmp), args.out, names)
    for line in found:
        print(line, file=sys.stderr)
    if not found:
        print(f"{args.out} matches the release ({len(names)} files)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
