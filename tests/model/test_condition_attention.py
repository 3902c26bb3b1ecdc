"""Condition-causal attention (spec.model.conditionAttention: causal): every attention backend computes the one
rule (`attention.condition_may_attend`) like an independent per-sample reference, with gradients; MMDiT applies it
with clean (t = 0) condition modulation; full-attention models, configs and checkpoints are what they were."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from omnitrain.model import attention as attn
from omnitrain.model.attention import attention, flex, force_backend, with_condition_mask
from omnitrain.model.config import ModelConfig, resolve_model_config
from omnitrain.model.mmdit import BlockContext, MMDiT, randomize_
from omnitrain.model.packing import VIDEO, SampleRecord, pack
from omnitrain.trainer.checkpoint.manifest import model_fingerprint

TOL = {"rtol": 1e-5, "atol": 1e-5}
LAYOUTS = [[5, 9, 1, 12], [17], [1, 1, 1], [4, 6]]


@pytest.fixture(params=["split", "masked"])
def per_sample_path(request, monkeypatch):
    """sdpa_loop/math split long samples by kind of query and run short ones as one masked call: both paths."""
    monkeypatch.setattr(attn, "SPLIT_MIN_TOKENS", 0 if request.param == "split" else 10**9)
    return request.param


def _ctx(lengths, is_condition=None):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return BlockContext(
        sample_cond=None,
        cond_row=None,
        cos=None,
        sin=None,
        cu_seqlens=cu,
        max_seqlen=max(lengths),
        is_condition=is_condition,
    )


def _qkv(tokens, seed, heads=3, dim=8):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(tokens, heads, dim, generator=gen) for _ in range(3))


def _is_condition(lengths, seed):
    """Random kinds (not only conditions first, so no backend may rely on the packing order)."""
    tokens = sum(lengths)
    is_condition = torch.rand(tokens, generator=torch.Generator().manual_seed(seed)) < 0.5
    is_condition[0], is_condition[-1] = True, False  # at least one condition token and one video token
    return is_condition


def _condition_causal_reference(q, k, v, lengths, is_condition):
    """Independent of the rule's code: per sample, condition queries attend over the condition keys alone, video
    queries over the whole sample."""
    out = torch.empty_like(q)
    start = 0
    for n in lengths:
        s = slice(start, start + n)
        cond = is_condition[s]
        full = attn._math(q[s], k[s], v[s])
        part = out[s]
        part[~cond] = full[~cond]
        if cond.any():
            part[cond] = attn._math(q[s][cond], k[s][cond], v[s][cond])
        start += n
    return out


def _fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    """flash_attn_varlen_func's contract on CPU (separate query and key boundaries, no mask), by math."""
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
    cq, ck = cu_q.tolist(), cu_k.tolist()
    return torch.cat([attn._math(q[a:b], k[c:d], v[c:d]) for a, b, c, d in zip(cq, cq[1:], ck, ck[1:])])


@pytest.fixture
def fake_flash(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=_fake_flash_varlen))


BACKENDS = ["math", "sdpa_loop", "sdpa_mask", "flex", "flash"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lengths", LAYOUTS)
def test_every_backend_computes_the_condition_causal_rule(backend, lengths, fake_flash, per_sample_path):
    """Outputs and gradients equal the reference. "flash" runs its real gather/varlen code against a CPU stand-in
    of flash_attn_varlen_func (the kernel itself needs CUDA); "flex" with gradients is its dense CPU path, its
    kernel forward is checked in test_flex_kernel_forward_under_the_rule."""
    is_condition = _is_condition(lengths, 5)
    ctx = _ctx(lengths, is_condition)
    q0, k0, v0 = _qkv(sum(lengths), 4)
    ref = [x.clone().requires_grad_() for x in (q0, k0, v0)]
    want = _condition_causal_reference(*ref, lengths, is_condition)
    weights = torch.linspace(-1, 1, want.numel()).view_as(want)
    (want * weights).sum().backward()
    q, k, v = (x.clone().requires_grad_() for x in (q0, k0, v0))
    with force_backend(backend):
        got = attention(q, k, v, ctx)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, want, **TOL)
    for g, r in zip((q, k, v), ref):
        torch.testing.assert_close(g.grad, r.grad, **TOL)
    if max(lengths) > 1:  # the rule changes the result: a condition token no longer sees its sample's video
        with torch.no_grad(), force_backend(backend):
            assert not torch.allclose(attention(q0, k0, v0, with_condition_mask(ctx, None)), want, **TOL)


@pytest.mark.parametrize("lengths", LAYOUTS)
def test_flex_kernel_forward_under_the_rule(lengths):
    q, k, v = _qkv(sum(lengths), 4)
    is_condition = _is_condition(lengths, 6)
    with torch.no_grad():
        got = flex(q, k, v, _ctx(lengths).cu_seqlens, is_condition)  # the real FlexAttention kernel, forward
    torch.testing.assert_close(got, _condition_causal_reference(q, k, v, lengths, is_condition), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_past_the_samples_attends_only_to_itself(backend, fake_flash, per_sample_path):
    """Sequence-parallel padding past cu_seqlens[-1] is not a condition: its own segment, as under full attention."""
    lengths = [5, 9]
    q, k, v = _qkv(sum(lengths), 7)
    is_condition = _is_condition(lengths, 8)
    pad = _qkv(3, 9)
    qp, kp, vp = (torch.cat((x, p)) for x, p in zip((q, k, v), pad))
    with torch.no_grad(), force_backend(backend):
        out = attention(qp, kp, vp, _ctx(lengths, is_condition))
    torch.testing.assert_close(out[: sum(lengths)], _condition_causal_reference(q, k, v, lengths, is_condition), **TOL)
    torch.testing.assert_close(out[sum(lengths) :], attn._math(*pad), **TOL)


CFG = ModelConfig(hidden_size=32, depth=2, num_heads=4, latent_channels=4, text_dim=16, frequency_embedding_size=32)


def _batch(gen):
    c = CFG.latent_channels
    recs = [
        SampleRecord(
            text=torch.randn(n, CFG.text_dim, generator=gen),
            video=torch.randn(c, 2, 4, 4, generator=gen),
            reference=torch.randn(c, 1, 4, 4, generator=gen) if n == 3 else None,
        )
        for n in (5, 3)
    ]
    return pack(recs, CFG.patch_size), torch.tensor([0.3, 0.8])


def test_causal_mmdit_modulates_conditions_as_clean_and_masks_them():
    """Condition tokens' outputs depend neither on t nor on the video; video tokens' depend on both."""
    causal = dataclasses.replace(CFG, condition_attention="causal")
    model = randomize_(MMDiT(causal), torch.Generator().manual_seed(0)).eval()
    batch, t = _batch(torch.Generator().manual_seed(1))
    cond = batch.kind != VIDEO
    other_video = dataclasses.replace(batch, video=torch.randn_like(batch.video))
    with torch.no_grad():
        out = model(batch, t)
        out_t = model(batch, torch.tensor([0.9, 0.1]))
        out_v = model(other_video, t)
    torch.testing.assert_close(out_t[cond], out[cond], **TOL)
    torch.testing.assert_close(out_v[cond], out[cond], **TOL)
    assert not torch.allclose(out_t[~cond], out[~cond]) and not torch.allclose(out_v[~cond], out[~cond])
    # the same parameters under full attention give another model (conditions see the video there)
    full = MMDiT(CFG)
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(full.eval()(other_video, t)[cond], full(batch, t)[cond])


def test_full_attention_models_configs_and_checkpoints_are_unchanged():
    """Default full: same parameter names in both modes (a full checkpoint loads into a causal model and back), and
    a full model's config dict, hence its checkpoint fingerprint and model files, is what it was before the field."""
    full, causal = MMDiT(CFG), MMDiT(dataclasses.replace(CFG, condition_attention="causal"))
    assert full.state_dict().keys() == causal.state_dict().keys()
    causal.load_state_dict(full.state_dict())
    assert set(CFG.to_dict()) == {f.name for f in dataclasses.fields(ModelConfig)} - {"condition_attention"}
    assert CFG.condition_attention == "full" and resolve_model_config("tiny").condition_attention == "full"
    causal_cfg = resolve_model_config("tiny", {"condition_attention": "causal"})
    assert causal_cfg.to_dict()["condition_attention"] == "causal"
    assert model_fingerprint(causal_cfg) != model_fingerprint(resolve_model_config("tiny"))
    with pytest.raises(ValueError, match="spec.model.conditionAttention"):
        ModelConfig(condition_attention="sideways")


def test_spec_field_reaches_the_model_config():
    from pydantic import ValidationError

    from omnitrain.spec import ModelSpec

    assert ModelSpec.model_validate({"conditionAttention": "causal"}).resolve().condition_attention == "causal"
    assert ModelSpec.model_validate({}).resolve() == resolve_model_config("tiny")
    with pytest.raises(ValidationError, match="conditionAttention"):
        ModelSpec.model_validate({"conditionAttention": "sideways"})
