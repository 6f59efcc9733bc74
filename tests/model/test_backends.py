"""Backends: HookedTransformer variants and a TransformerBridge booted from a local
Hugging Face folder, checked against Hugging Face's own ``output_attentions``."""

from __future__ import annotations

import pytest
import torch
from _tiny import random_text, tiny_model

from focuslens import LabeledPrompt, contextual_scores, tokenize_prompt
from focuslens.model.loading import BackendError, check_backend, load_model
from focuslens.model.loading import hooked_transformer_class as loading_hooked


def _prompts(n: int) -> list[LabeledPrompt]:
    rng = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        docs = [("w1", random_text(rng, 2 + d % 3)) for d in range(3 + i)]
        out.append(
            LabeledPrompt.from_documents(
                "w4 ?",
                docs,
                i % len(docs),
                ["x"],
                instruction="w5 w6",
                response=random_text(rng, 2),
            )
        )
    return out


def authors_scores(hf_model, tp) -> torch.Tensor:
    """METHOD.md section 2 as the authors compute it: HF output_attentions, response rows,
    sum over the relevant span, mean over rows."""
    hf_model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = hf_model(tp.tokens[None], output_attentions=True)
    rows = list(range(tp.n_prompt, len(tp)))
    s, e = tp.relevant
    return torch.stack([a[0][:, rows][:, :, s:e].sum(-1).mean(-1) for a in out.attentions])


@pytest.mark.bridge
@pytest.mark.slow
def test_bridge_scores_equal_hugging_face_output_attentions(hf_llama_folder):
    from transformers import LlamaForCausalLM

    bridge = load_model(str(hf_llama_folder))
    hf_model = LlamaForCausalLM.from_pretrained(hf_llama_folder)
    prompts = _prompts(3)
    scores = contextual_scores(bridge, prompts, batch_size=2)
    expected = torch.stack([authors_scores(hf_model, tokenize_prompt(bridge, p)) for p in prompts])
    torch.testing.assert_close(scores.per_example["relevant"], expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.01
    assert check_backend(bridge).ok


@pytest.mark.parametrize("kind", ["gpt2", "rotary", "gqa"])
def test_backend_self_test_passes_on_hooked_transformer(kind):
    model = tiny_model(kind)
    report = check_backend(model)
    assert report.ok, str(report)
    qk = ("hook_rot_q", "hook_rot_k") if kind != "gpt2" else ("hook_q", "hook_k")
    for point in (*qk, "hook_attn_scores", "hook_pattern", "hook_z"):
        for check in ("{} exists", "{} fires", "a write at {} takes effect"):
            assert report.checks[check.format(point)], check.format(point)
    assert report.checks["the KV cache continues a sequence"]
    assert (
        report.checks["pattern rows sum to 1"] and report.checks["hook_attn_scores is pre-softmax"]
    )


def test_backend_self_test_catches_a_dead_hook(monkeypatch):
    """A backend whose hook_pattern ignores what a hook returns (simulated by wrapping every
    hook added there so that its result is dropped) must fail the self-test."""
    model = tiny_model("rotary")
    point = model.blocks[-1].attn.hook_pattern
    original = point.add_hook

    def add_hook(hook, *args, **kwargs):
        def dropped(x, hook=None):
            hook_fn(x.clone(), hook=hook)  # runs, but its write is lost

        hook_fn = hook
        return original(dropped, *args, **kwargs)

    monkeypatch.setattr(point, "add_hook", add_hook)
    with pytest.raises(BackendError, match=r"\[ \] a write at hook_pattern takes effect"):
        check_backend(model)
    report = check_backend(model, strict=False)
    assert not report.ok and report.failed() == ["a write at hook_pattern takes effect"]


def _silence(model, layer: int, point: str) -> None:
    """Make ``blocks.{layer}.attn.{point}`` a hook point that never fires: the attention
    module calls a fresh identity instead, as a backend that skips the hook would."""
    attn = model.blocks[layer].attn
    stale = getattr(attn, point)
    object.__setattr__(attn, "_modules", {**attn._modules, point: torch.nn.Identity()})
    assert model.hook_dict[f"blocks.{layer}.attn.{point}"] is stale


def test_a_hook_that_never_fires_is_named_and_steering_refuses():
    """The case of TL 4's native bridge, simulated on a HookedTransformer: hook_rot_q of
    one layer never fires. The self-test names it, and steering raises instead of being a
    silent no-op; an entry point that does not need the hook still runs."""
    import focuslens
    from focuslens.directions import FocusDirections, ModelShape

    model = tiny_model("rotary")
    _silence(model, 1, "hook_rot_q")
    report = check_backend(model, strict=False)
    assert report.failed() == ["hook_rot_q fires", "a write at hook_rot_q takes effect"]
    assert "blocks.1.attn.hook_rot_q never fired" in str(report)
    shape = ModelShape.of(model)
    directions = FocusDirections(
        torch.ones(shape.n_layers, shape.n_heads, shape.d_head),
        torch.zeros(shape.n_layers, shape.n_heads, shape.d_head),
        shape,
        heads=[(1, 0)],
        layers=[0, 1],
    )
    tokens = torch.tensor([[1, 20, 30, 40]])
    with pytest.raises(BackendError, match="hook_rot_q fires"):
        with directions.steer(model, [(1, 0)], alpha=1.0):
            model(tokens)
    assert model._focuslens_backend_report is not None  # cached on the model
    with pytest.raises(BackendError, match="hook_rot_q"):
        focuslens.contextual_scores(model, _prompts(1))
    # steering by the score bias needs hook_rot_k and hook_attn_scores, which both work
    with directions.steer(model, [(1, 0)], alpha=1.0, form="scores"):
        model(tokens)


def test_the_self_test_runs_once_per_model(monkeypatch):
    import focuslens.model.loading as loading

    model = tiny_model("gpt2")
    calls = []
    original = loading.check_backend
    monkeypatch.setattr(
        loading, "check_backend", lambda m, **kw: calls.append(1) or original(m, **kw)
    )
    for _ in range(3):
        contextual_scores(model, _prompts(1))
    assert calls == [1]


@pytest.mark.bridge
def test_load_model_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model("demo", dtype="float8")  # checked before loading
    if loading_hooked():
        with pytest.raises(ValueError, match="unknown model 'no-such-model-xyz'"):
            load_model("no-such-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        load_model(str(tmp_path / "empty"))


@pytest.mark.bridge
def test_load_model_boots_a_bridge_where_hooked_transformer_is_gone(monkeypatch):
    """Under transformer-lens 4.x (simulated here under 3.x too) a model name goes to
    TransformerBridge.boot_transformers, in compatibility mode."""
    from transformer_lens.model_bridge import TransformerBridge

    import focuslens.model.loading as loading

    calls = []

    class Booted:
        def enable_compatibility_mode(self, **kwargs):
            calls.append(("compat", kwargs))

    def boot(name, **kwargs):
        calls.append(("boot", name, kwargs["dtype"]))
        return Booted()

    monkeypatch.setattr(loading, "hooked_transformer_class", lambda: None)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot))
    assert isinstance(load_model("some-org/some-model", dtype="bfloat16"), Booted)
    assert calls == [
        ("boot", "some-org/some-model", torch.bfloat16),
        ("compat", {"disable_warnings": True}),
    ]


@pytest.mark.bridge
@pytest.mark.slow
@pytest.mark.parametrize("form", ["qk", "scores"])
def test_steering_a_bridge_equals_hugging_face_with_the_query_added(
    hf_llama_folder, monkeypatch, form
):
    """Focus-direction steering on a TransformerBridge against Hugging Face's own Llama with
    ``alpha * d_q`` added to one head's rotated queries (as the authors' code does). The
    key vectors are random and added by focuslens only: they cancel in the softmax.
    Compared as log-probabilities: compatibility mode centres the unembedding, which
    shifts each position's logits by a constant."""
    import transformers.models.llama.modeling_llama as llama
    from transformers import LlamaForCausalLM

    from focuslens.directions import FocusDirections, ModelShape

    bridge = load_model(str(hf_llama_folder))
    hf_model = LlamaForCausalLM.from_pretrained(hf_llama_folder)
    hf_model.config._attn_implementation = "eager"
    shape = ModelShape.of(bridge)
    g = torch.Generator().manual_seed(0)
    d_q = torch.randn(shape.n_layers, shape.n_heads, shape.d_head, generator=g)
    d_k = torch.randn(shape.n_layers, shape.n_heads, shape.d_head, generator=g)
    layers = list(range(shape.n_layers))
    directions = FocusDirections(d_q=d_q, d_k=d_k, shape=shape, heads=[(1, 2)], layers=layers)
    tokens = tokenize_prompt(bridge, _prompts(1)[0]).tokens[None]
    alpha, calls = 1.5, []
    rotate = llama.apply_rotary_pos_emb

    def steered_rotary(q, k, cos, sin, *args, **kwargs):
        q, k = rotate(q, k, cos, sin, *args, **kwargs)
        layer = len(calls) % shape.n_layers  # called once per layer, in order
        calls.append(layer)
        if layer == 1:
            q = q.clone()
            q[:, 2] += alpha * d_q[1, 2]  # [batch, head, pos, d_head]
        return q, k

    with torch.no_grad():
        plain = bridge(tokens)
        with directions.steer(bridge, [(1, 2)], alpha, form=form):
            got = bridge(tokens)
        # the bridge wraps the same Hugging Face modules: patch only after it has run
        monkeypatch.setattr(llama, "apply_rotary_pos_emb", steered_rotary)
        expected = hf_model(tokens).logits
    assert calls == layers
    got, plain, expected = (x.log_softmax(-1) for x in (got, plain, expected))
    assert (expected - plain).abs().max() > 1e-2  # the steer is visible
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
