"""The authors' released directions shipped with focuslens: the same as the release files,
shape-checked like them, found by name, and installed with the package."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch
from test_directions import RELEASE, shaped_model

import focuslens
from focuslens.directions import FocusDirections, ModelShape
from focuslens.directions.pretrained import PRETRAINED, RELEASED, pretrained_heads

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    # From each model's Hugging Face config.json: num_hidden_layers, num_attention_heads,
    # num_key_value_heads, head_dim (hidden_size / num_attention_heads).
    "meta-llama/Llama-3.2-3B-Instruct": (28, 24, 8, 3072 // 24),
    "Qwen/Qwen2.5-7B-Instruct": (28, 28, 4, 3584 // 28),
    "mistralai/Ministral-8B-Instruct-2410": (36, 32, 8, 128),
}
needs_release = pytest.mark.skipif(not RELEASE.is_dir(), reason="release files not present")


def release_folder(name: str) -> Path:
    return RELEASE / "head_features" / name.replace("/", "_") / "direction_relevant"


@needs_release
@pytest.mark.parametrize("name", list(CONFIGS))
def test_pretrained_equals_the_release_files(name):
    model = shaped_model(*CONFIGS[name])
    shipped = FocusDirections.pretrained(name, model)
    imported = FocusDirections.from_release(release_folder(name), model)
    assert torch.equal(shipped.d_q, imported.d_q) and torch.equal(shipped.d_k, imported.d_k)
    assert shipped.d_q.dtype == torch.float32
    assert (
        shipped.heads == imported.heads
        and len(shipped.heads) == CONFIGS[name][0] * CONFIGS[name][1]
    )
    for field in ("shape", "layers", "hook_point", "training"):
        assert getattr(shipped, field) == getattr(imported, field), field
    # The head ranking is the release's JSON, in its order.
    heads_file = (
        RELEASE
        / "contextual_heads_scores_full_seq"
        / name.replace("/", "_")
        / "relevant_heads.json"
    )
    ranked = [tuple(h) for h in json.loads(heads_file.read_text())]
    assert pretrained_heads(name) == ranked == shipped.heads
    assert shipped.meta["model"] == name and "billzyx/focus_direction" in shipped.meta["source"]
    # A steering hook of the shipped directions adds the released row of that head.
    layer, head = shipped.heads[0]
    released_q = torch.load(
        release_folder(name) / f"head_q_directions_{layer}.pth",
        map_location="cpu",
        weights_only=True,
    )
    tokens = torch.arange(1, 5)[None]
    hook = f"blocks.{layer}.attn.hook_rot_q"
    _, base = model.run_with_cache(tokens, names_filter=hook)
    with shipped.steer(model, [(layer, head)], 1.0):
        _, steered = model.run_with_cache(tokens, names_filter=hook)
    delta = steered[hook] - base[hook]
    torch.testing.assert_close(delta[0, :, head], released_q[head].detach().expand(4, -1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shipped_shapes_are_the_models_shapes(name):
    """Independent of the release files: the shapes recorded in the shipped files are
    those of the real models' configs, so that the shape check refuses other models."""
    fd = FocusDirections.pretrained(name)
    n_layers, n_heads, n_kv, d_head = CONFIGS[name]
    assert fd.shape == ModelShape(n_layers, n_heads, n_kv, d_head, rotary=True)
    assert fd.hook_point == "hook_rot_q/hook_rot_k" and fd.training == {"method": "release"}
    assert sorted(pretrained_heads(name)) == [
        (layer, head) for layer in range(n_layers) for head in range(n_heads)
    ]
    # The released query vectors are long, the key vectors tiny (docs/howto/released-directions.md).
    norms = fd.norms()
    assert 20 < float(norms["q"].mean()) < 35 and float(norms["k"].mean()) < 1.0


def test_pretrained_names_and_errors():
    assert set(PRETRAINED) == set(CONFIGS)
    assert focuslens.pretrained_heads("META-LLAMA/llama-3.2-3b-instruct")[:2] == [(13, 23), (12, 1)]
    with pytest.raises(ValueError, match=r"no released focus directions for 'gpt2'.*Qwen/Qwen2.5"):
        FocusDirections.pretrained("gpt2")
    with pytest.raises(ValueError, match="ships them for 'meta-llama/Llama-3.2-3B-Instruct'"):
        focuslens.pretrained_heads("Llama-3.2-3B")
    # With a model of another shape: both shapes named.
    with pytest.raises(ValueError, match=r"28 layers x 24 heads.*but the model has 28 layers x 28"):
        FocusDirections.pretrained("meta-llama/Llama-3.2-3B-Instruct", shaped_model(28, 28, 4))
    with pytest.raises(ValueError, match=r"36 layers x 32 heads.*d_head 64"):
        FocusDirections.pretrained(
            "mistralai/Ministral-8B-Instruct-2410", shaped_model(36, 32, 8, d_head=64)
        )


def test_pretrained_refuses_adjacent_rotary_pairs():
    model = shaped_model(28, 24, 8)
    model.cfg.rotary_adjacent_pairs = True
    with pytest.raises(ValueError, match="rotate-half"):
        FocusDirections.pretrained("meta-llama/Llama-3.2-3B-Instruct", model)


def test_every_shipped_file_is_package_data():
    """pyproject's package-data globs cover the shipped files (else a wheel lacks them)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["focuslens"]
    package = ROOT / "focuslens"
    files = sorted(p.relative_to(package).as_posix() for p in RELEASED.iterdir())
    assert len(files) == 2 * len(PRETRAINED) + 2 and "LICENSE" in {Path(f).name for f in files}
    uncovered = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not uncovered, f"not in [tool.setuptools.package-data]: {uncovered}"
    licence = (RELEASED / "LICENSE").read_text()
    assert "MIT License" in licence and "Youxiang Zhu" in licence


def test_released_directions_page_has_the_shipped_table():
    """docs/howto/released-directions.md shows the shipped heads and norms as
    scripts/convert_release.py computes them from the shipped files."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert", ROOT / "scripts/convert_release.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    table = convert.shipped_table()
    page = (ROOT / "docs/howto/released-directions.md").read_text(encoding="utf-8")
    assert table in page, f"the page lacks the current table:\n{table}"
    # Independent of the script: the top heads and one norm, recomputed here.
    fd = FocusDirections.pretrained("Qwen/Qwen2.5-7B-Instruct")
    assert "L19H15, L19H22, L22H7, L21H5, L19H17" in table
    assert f"| {float(fd.d_q.norm(dim=-1).mean()):.1f} |" in table
