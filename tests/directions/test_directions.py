"""Focus directions: planted-direction recovery, the closed form against autograd, the
per-layer shortcut against the whole model, files, and the authors' release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tiny import random_text, tiny_model, word_tokenizer

from focuslens import LabeledPrompt, contextual_scores
from focuslens.directions import FocusDirections, ModelShape
from focuslens.directions.closed_form import closed_form_gradient
from focuslens.directions.inputs import cache_queries_keys
from focuslens.directions.learn import layer_mass, learn_focus_directions
from focuslens.model.generation import generate_greedy
from focuslens.model.responses import with_responses
from focuslens.prompts.tokens import tokenize_prompt
from focuslens.scores.reduce import prepare

RELEASE = Path(__file__).resolve().parents[2].parent / "shared/reference/focus_direction_release"
LLAMA = RELEASE / "head_features/meta-llama_Llama-3.2-3B-Instruct/direction_relevant"
QWEN = RELEASE / "head_features/Qwen_Qwen2.5-7B-Instruct/direction_relevant"
needs_release = pytest.mark.skipif(not LLAMA.is_dir(), reason="release files not present")


# ---------------------------------------------------------------------------- planted model
MARKER = "w0"


def planted_model(c: float = 6.0, seed: int = 0):
    """One attention-only layer without positions or norms, so a key depends on its token
    only. The marker token's key (head 1) is ``c * u`` and every other key and every query
    is orthogonal to ``u``: raising the marker's attention means moving ``d_q`` along
    ``u``. ``u`` has entries ``+-1/sqrt(d_head)`` (see the Adam note in focuslens.directions.learn)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = word_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_head=8,
        d_vocab=len(tok),
        n_ctx=128,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="gelu",
        seed=seed,
        default_prepend_bos=True,
    )
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(seed)
    u = (torch.randint(0, 2, (8,), generator=g).float() * 2 - 1) / 8**0.5
    marker = tok.convert_tokens_to_ids(MARKER)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3, generator=g)
        model.pos_embed.W_pos.zero_()
        attn = model.blocks[0].attn
        attn.b_Q.zero_()
        attn.b_K.zero_()
        E = model.embed.W_E
        E[:, 0] = 0
        E[marker] = 0
        E[marker, 0] = 1.0
        for w in (attn.W_Q, attn.W_K):
            w[1] -= (w[1] @ u)[:, None] * u  # no component along u
        attn.W_K[1, 0] = c * u
    model.set_tokenizer(tok)
    return model.eval(), u


def planted_prompts(n: int, seed: int = 0) -> list[LabeledPrompt]:
    rng = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(1, 40)]
    prompts = []
    for i in range(n):
        docs = [
            " ".join(words[j] for j in torch.randint(len(words), (4,), generator=rng))
            for _ in range(5)
        ]
        gold = i % 5
        docs[gold] = " ".join([MARKER] * 4)
        prompts.append(
            LabeledPrompt.from_documents(
                "w41 w42",
                docs,
                gold,
                ["w43"],
                instruction="w44",
                doc_body="{text}",
                response="w45 w46 w47",
            )
        )
    return prompts


def test_planted_direction_is_recovered_and_raises_the_span_mass():
    model, u = planted_model()
    prompts = planted_prompts(8)
    learned = learn_focus_directions(
        model, prompts, epochs=5, lr=1e-2, response="given", record_auto=False
    )
    closed = learn_focus_directions(
        model, prompts, method="closed_form", response="given", record_auto=False
    )
    cos = torch.nn.functional.cosine_similarity
    assert cos(learned.d_q[0, 1], u, dim=0) > 0.9
    assert cos(closed.d_q[0, 1], u, dim=0) > 0.9
    # The unplanted head has no such direction.
    assert abs(float(cos(closed.d_q[0, 0], u, dim=0))) < 0.9
    before = contextual_scores(model, prompts).relevant[0, 1]
    with learned.steer(model, [(0, 1)], 1.0):
        after = contextual_scores(model, prompts).relevant[0, 1]
    assert after > before + 0.1
    history = learned.training["loss_history"]["0"]
    assert history[-1] < history[0]


# ---------------------------------------------------------------------------- oracles
def make_prompts(n, seed=0):
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        docs = [("w1", random_text(rng, 2 + (i + d) % 4)) for d in range(4 + i % 2)]
        out.append(
            LabeledPrompt.from_documents(
                "w7 w8", docs, i % 4, ["x"], instruction="w9", response=random_text(rng, 2)
            )
        )
    return out


def whole_model_mass(model, tp, layer, d_q, d_k):
    """The layer's mean relevant-span mass of the response rows, from a full forward pass
    of the model with the directions added by hooks (the naive way)."""
    group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    rot = model.cfg.positional_embedding_type == "rotary"
    out = {}

    def read(pattern, hook):
        rows = pattern[0, :, tp.n_prompt :, tp.relevant[0] : tp.relevant[1]]
        out["mass"] = rows.sum(-1).mean()

    fwd = [
        (f"blocks.{layer}.attn.hook_{'rot_' if rot else ''}q", lambda q, hook: q + d_q),
        (
            f"blocks.{layer}.attn.hook_{'rot_' if rot else ''}k",
            lambda k, hook: k + d_k.reshape(-1, group, d_k.shape[-1]).mean(1),
        ),
        (f"blocks.{layer}.attn.hook_pattern", read),
    ]
    with model.hooks(fwd_hooks=fwd):
        model(tp.tokens[None])
    return out["mass"]


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_per_layer_shortcut_equals_whole_model(kind):
    """Running one attention layer on its cached input gives the same mass and the same
    gradients as the whole model: the shortcut is exact."""
    model = tiny_model(kind)
    tps = prepare(model, make_prompts(3), query="response", sink=0)
    cache = cache_queries_keys(model, tps, [1])
    g = torch.Generator().manual_seed(1)
    for i, tp in enumerate(tps):
        d_q = (torch.randn(4, 8, generator=g) * 0.5).requires_grad_()
        d_k = (torch.randn(4, 8, generator=g) * 0.5).requires_grad_()
        rows = (
            torch.arange(tp.n_prompt, len(tp))[None],
            torch.ones(1, tp.n_response),
            torch.zeros(1, 1, len(tp)).index_fill_(2, torch.arange(*tp.relevant), 1.0),
        )
        q_in, k_in = cache[1][i]
        fast = layer_mass(model, 1, (q_in[None], k_in[None]), d_q, d_k, rows).mean()
        slow = whole_model_mass(model, tp, 1, d_q, d_k)
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
        fast_grad = torch.autograd.grad(fast, [d_q])[0]
        slow_grad = torch.autograd.grad(slow, [d_q])[0]
        torch.testing.assert_close(fast_grad, slow_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_closed_form_equals_autograd_at_zero(kind):
    model = tiny_model(kind)
    prompts = make_prompts(4)
    tps = prepare(model, prompts, query="response", sink=0)
    grad, qnorm = closed_form_gradient(model, tps, [0, 1], batch_size=3)
    for layer in (0, 1):
        d_q = torch.zeros(4, 8, requires_grad=True)
        d_k = torch.zeros(4, 8, requires_grad=True)
        total = sum(whole_model_mass(model, tp, layer, d_q, d_k) for tp in tps) / len(tps)
        g_q, g_k = torch.autograd.grad(total, [d_q, d_k])
        torch.testing.assert_close(grad[layer], g_q, atol=1e-6, rtol=1e-4)
        # The key direction's true gradient is zero: it cancels in the softmax.
        assert g_k.abs().max() < 1e-6 * max(1.0, float(g_q.abs().max()))
    assert grad.abs().max() > 1e-3
    # Query norms: mean over response rows and examples, checked on the full cache.
    name = "hook_rot_q" if kind != "gpt2" else "hook_q"
    norms = []
    for tp in tps:
        _, cache = model.run_with_cache(tp.tokens[None], names_filter=lambda n: n.endswith(name))
        norms.append(cache[f"blocks.1.attn.{name}"][0, tp.n_prompt :].norm(dim=-1).mean(0))
    torch.testing.assert_close(qnorm[1], torch.stack(norms).mean(0), atol=1e-5, rtol=1e-5)


def test_learning_is_seeded_pure_and_batched():
    model = tiny_model("gqa")
    prompts = make_prompts(4)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.random.get_rng_state()
    kw = dict(epochs=2, response="given", record_auto=False)
    a = learn_focus_directions(model, prompts, seed=3, **kw)
    b = learn_focus_directions(model, prompts, seed=3, **kw)
    c = learn_focus_directions(model, prompts, seed=4, **kw)
    batched = learn_focus_directions(model, prompts, seed=3, batch_size=4, **kw)
    assert torch.equal(a.d_q, b.d_q) and not torch.equal(a.d_q, c.d_q)
    assert batched.d_q.shape == a.d_q.shape and not torch.equal(batched.d_q, a.d_q)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert a.training["method"] == "learned" and len(a.training["loss_history"]["1"]) == 2
    # Heads were ranked by their contextual score on the prompts.
    top = contextual_scores(model, prompts, sink=0).top_heads(3)
    assert a.heads[:3] == top


def test_learning_only_the_layers_of_the_heads():
    model = tiny_model("rotary")
    fd = learn_focus_directions(
        model, make_prompts(2), heads=[(1, 2), (1, 0)], epochs=1, response="given"
    )
    assert fd.layers == [1] and fd.heads == [(1, 2), (1, 0)]
    assert torch.equal(fd.d_q[0], torch.zeros(4, 8)) and fd.d_q[1].abs().sum() > 0
    assert "auto" in fd.training and len(fd.training["auto"]["table"]) == 2


def test_gold_only_responses_follow_the_authors_recipe():
    model = tiny_model("rotary")
    prompts = make_prompts(2)
    answered, skipped = with_responses(model, prompts, "gold_only", max_new_tokens=3)
    assert skipped == []
    for p, a in zip(prompts, answered):
        gold = tokenize_prompt(model, p.gold_only())
        gen = generate_greedy(model, gold.tokens[: gold.n_prompt], max_new_tokens=3)
        assert a.response == gen.text and a.text == p.text
    with pytest.raises(ValueError, match="prompt 0 has no relevant document"):
        learn_focus_directions(
            model, [LabeledPrompt("w1 w2", None, [(0, 2)], ["x"], response="x")], response="given"
        )
    with pytest.raises(ValueError, match="prompt 0 has no response"):
        with_responses(model, [LabeledPrompt("w1 w2", None, [(0, 2)], ["x"])], "given")
    with pytest.raises(ValueError, match="method must be one of"):
        learn_focus_directions(model, prompts, method="pca")


# ---------------------------------------------------------------------------- files
def _directions(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = ModelShape.of(model)
    size = (shape.n_layers, shape.n_heads, shape.d_head)
    return FocusDirections(
        torch.randn(size, generator=g),
        torch.randn(size, generator=g),
        shape,
        heads=[(1, 2), (0, 0)],
        training={"method": "learned", "loss_history": {"0": [-0.1, -0.2]}},
    )


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model("gqa")
    fd = _directions(model)
    path = tmp_path / "fd.safetensors"
    fd.save(path)
    back = FocusDirections.load(path, model)
    assert torch.equal(back.d_q, fd.d_q) and torch.equal(back.d_k, fd.d_k)
    assert back.shape == fd.shape and back.heads == fd.heads and back.layers == fd.layers
    assert back.training == fd.training and back.hook_point == "hook_rot_q/hook_rot_k"
    assert back.meta["versions_saved"]["focuslens"]


def test_load_refuses_other_shapes_and_bad_files(tmp_path):
    model = tiny_model("gqa")
    path = tmp_path / "fd.safetensors"
    _directions(model).save(path)
    with pytest.raises(ValueError, match=r"2 KV heads.*but the model has.*4 KV heads"):
        FocusDirections.load(path, tiny_model("rotary"))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        FocusDirections.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"d_q": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="no focuslens metadata"):
        FocusDirections.load(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match=r"d_q has shape \(2, 4, 7\)"):
        FocusDirections(torch.zeros(2, 4, 7), torch.zeros(2, 4, 8), ModelShape.of(model))


def test_dataframe_and_figure():
    model = tiny_model("rotary")
    fd = _directions(model)
    df = fd.to_dataframe()
    assert len(df) == 8 and set(df.columns) == {"layer", "head", "norm_q", "norm_k", "rank"}
    row = df[(df["layer"] == 1) & (df["head"] == 2)].iloc[0]
    assert row["rank"] == 0 and abs(row["norm_q"] - float(fd.d_q[1, 2].norm())) < 1e-6
    assert fd.figure().data[0].z.shape == (2, 4)


# ---------------------------------------------------------------------------- release
def shaped_model(n_layers, n_heads, n_kv, d_head=128):
    """A random rotary model with a released model's attention shape and a small width."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=16,
        n_heads=n_heads,
        n_key_value_heads=n_kv,
        d_head=d_head,
        d_vocab=20,
        n_ctx=16,
        attn_only=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        act_fn="silu",
        seed=0,
    )
    return HookedTransformer(cfg).eval()


@needs_release
def test_release_import_lands_on_the_right_layer_and_head():
    model = shaped_model(28, 24, 8)
    fd = FocusDirections.from_release(LLAMA, model)
    load = lambda kind, layer: torch.load(  # noqa: E731
        LLAMA / f"head_{kind}_directions_{layer}.pth", map_location="cpu", weights_only=True
    )
    for layer in (0, 13, 27):
        assert torch.equal(fd.d_q[layer], load("q", layer).detach())
        assert torch.equal(fd.d_k[layer], load("k", layer).detach())
    ranked = json.loads(
        (
            RELEASE
            / "contextual_heads_scores_full_seq/meta-llama_Llama-3.2-3B-Instruct"
            / "relevant_heads.json"
        ).read_text()
    )
    assert fd.heads == [tuple(h) for h in ranked] and fd.heads[0] == (13, 23)
    # Steering L13H23 adds the file's row 23 after the rotary embedding, at every
    # position, to head 23 of layer 13 only; its key vector goes to KV head 23 // 3 = 7.
    tokens = torch.arange(1, 9)[None]
    names = lambda n: n.endswith("hook_rot_q") or n.endswith("hook_rot_k")  # noqa: E731
    _, base = model.run_with_cache(tokens, names_filter=names)
    with fd.steer(model, [(13, 23)], 1.0):
        _, steered = model.run_with_cache(tokens, names_filter=names)
    for name in base.keys():
        diff = steered[name] - base[name]
        layer = int(name.split(".")[1])
        if layer < 13:  # later layers see a changed residual stream
            assert torch.equal(diff, torch.zeros_like(diff)), name
    dq = steered["blocks.13.attn.hook_rot_q"] - base["blocks.13.attn.hook_rot_q"]
    dk = steered["blocks.13.attn.hook_rot_k"] - base["blocks.13.attn.hook_rot_k"]
    torch.testing.assert_close(dq[0, :, 23], load("q", 13)[23].detach().expand(8, 128))
    assert dq[0, :, :23].abs().max() == 0
    torch.testing.assert_close(dk[0, :, 7], load("k", 13)[23].detach().expand(8, 128))
    assert dk[0, :, :7].abs().max() == 0
    # The release's key vectors are tiny next to its query vectors (zero true gradient).
    assert fd.d_k.std() < 0.1 * fd.d_q.std()


@needs_release
def test_release_import_refuses_wrong_shapes(tmp_path):
    with pytest.raises(
        ValueError, match=r"head_q_directions_0.pth has shape \(24, 128\).*\(24, 64\)"
    ):
        FocusDirections.from_release(LLAMA, shaped_model(28, 24, 8, d_head=64))
    with pytest.raises(ValueError, match=r"missing \[\], extra \[27\]"):
        FocusDirections.from_release(LLAMA, shaped_model(27, 24, 8))
    with pytest.raises(ValueError, match=r"has shape \(28, 128\).*\(24, 128\)"):
        FocusDirections.from_release(QWEN, shaped_model(28, 24, 8))
    with pytest.raises(ValueError, match="holds no head_q_directions"):
        FocusDirections.from_release(tmp_path, shaped_model(2, 24, 8))
    # A file that is not a tensor is refused (weights_only=True never runs code).
    folder = tmp_path / "bad"
    folder.mkdir()
    for kind in "qk":
        for layer in range(2):
            torch.save({"x": 1}, folder / f"head_{kind}_directions_{layer}.pth")
    with pytest.raises(ValueError, match="holds a dict, expected a tensor"):
        FocusDirections.from_release(folder, shaped_model(2, 24, 8))


@needs_release
def test_release_import_for_qwen_shape():
    model = shaped_model(28, 28, 4)
    fd = FocusDirections.from_release(QWEN, model)
    assert fd.d_q.shape == (28, 28, 128) and len(fd.heads) > 20
    assert fd.top_heads(20) == fd.top_heads(20).validate(model)


def test_non_finite_directions_are_refused_everywhere(tmp_path):
    """NaN or infinity in d_q would zero the steered heads' attention: never accepted, from
    the constructor, a corrupted file, or a release file."""
    model = tiny_model("rotary")
    fd = _directions(model)
    bad = fd.d_q.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"d_q holds 1 NaN or infinite value\(s\)"):
        FocusDirections(bad, fd.d_k, fd.shape)
    with pytest.raises(ValueError, match="d_k holds"):
        FocusDirections(fd.d_q, torch.full_like(fd.d_k, float("inf")), fd.shape)
    # A file whose tensor bytes were overwritten with NaN: the error names the file.
    path = tmp_path / "fd.safetensors"
    fd.save(path)
    raw = bytearray(path.read_bytes())
    nan = torch.tensor([float("nan")], dtype=torch.float32).numpy().tobytes()
    raw[-4:] = nan  # the last float of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError, match=rf"{path}: not valid focus directions: d_[qk] holds 1 NaN"
    ):
        FocusDirections.load(path)
    # Hand-edited metadata: named file, no JSONDecodeError / TypeError from deep inside.
    from safetensors.torch import load_file, save_file

    fd.save(path)
    tensors = load_file(str(path))
    for header, match in (
        ("{not json", "is not valid JSON"),
        ('{"format": "focuslens.FocusDirections/1", "shape": {"n_layers": 2}}', "not valid focus"),
        ('{"format": "focuslens.FocusDirections/1"}', "no 'shape'"),
        ("[1, 2]", "has format 'list'"),
    ):
        save_file(tensors, str(path), metadata={"focuslens": header})
        with pytest.raises(ValueError, match=rf"{path}.*{match}"):
            FocusDirections.load(path)
    # A release .pth full of NaN: the error names that file.
    folder = tmp_path / "release"
    folder.mkdir()
    shape = fd.shape
    for kind in "qk":
        for layer in range(shape.n_layers):
            value = torch.zeros(shape.n_heads, shape.d_head)
            if kind == "q" and layer == 1:
                value[:] = float("nan")
            torch.save(value, folder / f"head_{kind}_directions_{layer}.pth")
    with pytest.raises(ValueError, match=r"head_q_directions_1.pth holds \d+ NaN"):
        FocusDirections.from_release(folder, model)


def test_hook_point_in_metadata_must_fit_the_model():
    model = tiny_model("rotary")
    fd = _directions(model)
    assert fd.hook_point == "hook_rot_q/hook_rot_k"
    with pytest.raises(ValueError, match="hook_point 'hook_q/hook_k' does not fit a model of"):
        FocusDirections(fd.d_q, fd.d_k, fd.shape, hook_point="hook_q/hook_k")


def test_learning_from_given_responses_without_a_document_layout():
    """Prompts read from a "labeled" file have spans but no gold-only variant: learning
    works, the auto target is skipped with a note, and alpha='auto' says what is missing."""
    model = tiny_model("rotary")
    prompts = [
        LabeledPrompt(p.text, p.relevant, p.distractors, p.answers, response=p.response)
        for p in make_prompts(3)
    ]
    assert not any(p.has_variants for p in prompts)
    fd = learn_focus_directions(model, prompts, response="given", epochs=1, heads=[(1, 2)])
    assert fd.training["auto"] is None and "no target for alpha='auto'" in fd.training["auto_note"]
    with pytest.raises(ValueError, match="alpha='auto' needs a target"):
        with fd.steer(model, [(1, 2)], "auto", prompt_tokens=[torch.tensor([1, 2, 3])]):
            pass


def _attention_module_mass(model, layer, inputs, d_q, d_k, rows):
    """The former HookedTransformer-only route, as an oracle: run the layer's attention
    module on its cached inputs (``query_input`` / ``key_input``) with the directions
    added at its own hooks, and read its pattern."""
    from focuslens.model.hooks import key_hook_name, query_hook_name
    from focuslens.scores.reduce import span_mass

    group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    out = {}

    def keep(pattern, hook):
        out["pattern"] = pattern

    fwd = [
        (query_hook_name(model, layer), lambda q, hook: q + d_q),
        (key_hook_name(model, layer), lambda k, hook: k + d_k.reshape(-1, group, 8).mean(1)),
        (f"blocks.{layer}.attn.hook_pattern", keep),
    ]
    q_in, k_in = inputs
    with model.hooks(fwd_hooks=fwd):
        model.blocks[layer].attn(query_input=q_in, key_input=k_in, value_input=k_in)
    return span_mass(out["pattern"], *rows)[..., 0]


def _learn_through_attention_module(model, prompts, settings, layers, monkeypatch):
    """learn_focus_directions through the former route: the attention modules' cached
    inputs of ``layers`` and :func:`_attention_module_mass` instead of the hooked queries
    and keys and the recomputed pattern."""
    import focuslens.directions.learn as learn
    from focuslens.model.hooks import pre_hooks

    inputs: dict[int, list] = {layer: [] for layer in layers}

    def grab(layer, module, args, kwargs):
        if layer in inputs:
            inputs[layer].append((kwargs["query_input"][0], kwargs["key_input"][0]))

    tps = prepare(model, prompts, query="response", sink=0)
    with pre_hooks(model, grab), torch.no_grad():
        for tp in tps:
            model(tp.tokens[None])
    monkeypatch.setattr(learn, "cache_queries_keys", lambda m, t, layers: inputs)
    monkeypatch.setattr(learn, "layer_mass", _attention_module_mass)
    return learn_focus_directions(model, prompts, record_auto=False, **settings)


@pytest.mark.parametrize("kind", ["gpt2", "gqa"])
def test_learning_from_hooks_equals_the_attention_module_route(kind, monkeypatch):
    """Whole runs of learn_focus_directions (loss history and directions) from the hooked
    queries and keys equal the former route through the attention module's inputs."""
    model = tiny_model(kind)
    prompts = make_prompts(4)
    settings = dict(heads=[(0, 1), (1, 2)], epochs=3, lr=0.05, batch_size=2, response="given")
    new = learn_focus_directions(model, prompts, record_auto=False, **settings)
    old = _learn_through_attention_module(model, prompts, settings, [0, 1], monkeypatch)
    for layer in ("0", "1"):
        torch.testing.assert_close(
            torch.tensor(new.training["loss_history"][layer]),
            torch.tensor(old.training["loss_history"][layer]),
            atol=1e-5,
            rtol=0,
        )
    torch.testing.assert_close(new.d_q, old.d_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(new.d_k, old.d_k, atol=1e-5, rtol=0)
    assert new.d_q[1].abs().max() > 0.05  # the directions moved from their initial values


def test_learning_on_global_layers_of_a_model_with_a_local_window(monkeypatch):
    """A sliding window in layer 0 does not stop learning on layer 1: the loss and the
    directions equal the attention-module route's, whose pattern is the model's own.
    Heads of the local layer itself are refused, naming the layer."""
    model = tiny_model("local")
    assert model.blocks[0].attn.attn_type == "local"
    prompts = make_prompts(4)
    settings = dict(heads=[(1, 2)], epochs=3, lr=0.05, batch_size=2, response="given")
    with pytest.raises(ValueError, match=r"in layers \[0, 1\] \(local attention windows\)"):
        learn_focus_directions(model, prompts, **{**settings, "heads": [(0, 1), (1, 2)]})
    new = learn_focus_directions(model, prompts, record_auto=False, **settings)
    old = _learn_through_attention_module(model, prompts, settings, [1], monkeypatch)
    torch.testing.assert_close(
        torch.tensor(new.training["loss_history"]["1"]),
        torch.tensor(old.training["loss_history"]["1"]),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(new.d_q, old.d_q, atol=1e-5, rtol=0)
    assert new.d_q[1].abs().max() > 0.05


def test_learning_refuses_attention_it_does_not_reproduce():
    model = tiny_model("rotary")
    model.cfg.attn_scores_soft_cap = 30.0
    with pytest.raises(ValueError, match="attention-score soft-capping"):
        learn_focus_directions(model, make_prompts(2), response="given", epochs=1)
