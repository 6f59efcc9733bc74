"""Shared hook plumbing: positions under the KV cache, head sets."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_model
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from focuslens.heads import HeadSet, ranked_from_json
from focuslens.model.hooks import PositionTracker, absolute_query_positions, query_row_mask


def test_position_tracker_sees_the_cache_offset():
    model = tiny_model("rotary")
    tokens = model.to_tokens("w1 w2 w3 w4")
    seen = []

    def record(q, hook):
        seen.append((tracker.offset(1), q.shape[1]))

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with (
        PositionTracker(model) as tracker,
        model.hooks(fwd_hooks=[("blocks.1.attn.hook_rot_q", record)]),
    ):
        model(tokens, past_kv_cache=cache)
        model(tokens[:, -1:], past_kv_cache=cache)
        model(tokens[:, -1:], past_kv_cache=cache)
    assert seen == [(0, 5), (5, 1), (6, 1)]
    assert all(len(b.attn._forward_pre_hooks) == 0 for b in model.blocks)


@pytest.mark.bad_input
def test_query_row_mask():
    absolute = absolute_query_positions(3, 6)
    assert absolute.tolist() == [3, 4, 5]
    assert query_row_mask("all", absolute, None).tolist() == [[True] * 3]
    assert query_row_mask("generated", absolute, torch.tensor([4, 6])).tolist() == [
        [False, True, True],
        [False, False, False],
    ]
    assert query_row_mask("prompt", absolute, 4).tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match="positions must be one of"):
        query_row_mask("middle", absolute, 4)
    with pytest.raises(ValueError, match="needs the prompt length"):
        query_row_mask("prompt", absolute, None)


def test_headset_validation_and_formats(tmp_path):
    model = tiny_model("rotary")
    hs = HeadSet(["L1H2", (0, 3)])
    assert hs.to_list() == [[0, 3], [1, 2]] and str(hs) == "L0H3 L1H2"
    assert hs.validate(model) is hs
    assert hs.mask(2, 4).sum() == 2 and hs.mask(2, 4)[1, 2]
    with pytest.raises(
        ValueError, match="L2H0 does not exist in a model with 2 layers and 4 heads"
    ):
        HeadSet([(2, 0)]).validate(model)
    with pytest.raises(ValueError, match="empty"):
        HeadSet().validate(model)
    with pytest.raises(ValueError, match="cannot read head"):
        HeadSet(["layer1"])
    path = tmp_path / "relevant_heads.json"
    path.write_text("[[13, 23], [12, 1]]")
    assert ranked_from_json(path) == [(13, 23), (12, 1)]
    assert HeadSet.from_json(path) == HeadSet([(12, 1), (13, 23)])
    with pytest.raises(ValueError, match="list of \\[layer, head\\] pairs"):
        ranked_from_json('{"a": 1}')


def test_attn_hook_is_the_one_name_builder():
    from focuslens.model.hooks import ATTENTION_HOOKS, attn_hook, layer_hooks

    model = tiny_model("rotary")
    for point in ATTENTION_HOOKS:
        assert attn_hook(1, point) == f"blocks.1.attn.{point}"
        assert attn_hook(1, point) in model.hook_dict
    with pytest.raises(ValueError, match="unknown attention hook point 'hook_resid'"):
        attn_hook(0, "hook_resid")
    seen = []
    fwd = layer_hooks(range(2), "hook_z", lambda z, hook, layer: seen.append(layer))
    with model.hooks(fwd_hooks=fwd):
        model(model.to_tokens("w1 w2"))
    assert seen == [0, 1]  # each hook is told its layer; nothing parses the name


def test_pre_hooks_are_removed_also_after_an_exception():
    from focuslens.model.hooks import pre_hooks

    model = tiny_model("gqa")
    calls = []
    with pytest.raises(RuntimeError, match="inside"):
        with pre_hooks(model, lambda layer, m, a, kw: calls.append(layer)):
            model(model.to_tokens("w1 w2"))
            raise RuntimeError("inside")
    assert calls == [0, 1]
    with pre_hooks(
        model, lambda layer, m, a, kw: calls.append(("block", layer)), on="block", layers=[1]
    ):
        model(model.to_tokens("w1"))
    assert calls[-1] == ("block", 1)
    assert all(len(b._forward_pre_hooks) == 0 for b in model.blocks)
    assert all(len(b.attn._forward_pre_hooks) == 0 for b in model.blocks)


def test_active_hook_points_see_registered_hooks_only():
    from focuslens.model.hooks import active_hook_points, attn_hook, hooks

    model = tiny_model("gpt2")
    assert active_hook_points(model, ("hook_pattern",)) == []
    with hooks(model, [(attn_hook(1, "hook_pattern"), lambda p, hook: None)]):
        assert active_hook_points(model, ("hook_pattern",)) == ["blocks.1.attn.hook_pattern"]
    assert active_hook_points(model, ("hook_pattern",)) == []
