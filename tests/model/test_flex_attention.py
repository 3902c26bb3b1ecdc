"""The "flex" attention backend (torch FlexAttention with a block mask from cu_seqlens) against the math reference.

Tolerance: fp32 on CPU, 1e-5 (the same as the other backends' test): flex and math sum the same products in a
different order; observed differences are ~1e-7. Sizes are small because eager FlexAttention on CPU materialises
the score matrix (the fused kernel is the compiled CUDA path)."""

from __future__ import annotations

import pytest
import torch

from omnitrain.model import attention as attn
from omnitrain.model.attention import attention, block_mask_for, choose_backend, force_backend
from omnitrain.model.config import PRESETS
from omnitrain.model.mmdit import BlockContext, MMDiT, randomize_
from omnitrain.model.packing import SampleRecord, pack

LAYOUTS = [[5, 9, 1, 12], [17], [1, 1, 1], [1, 6, 1]]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _ctx(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return BlockContext(sample_cond=None, cond_row=None, cos=None, sin=None, cu_seqlens=cu, max_seqlen=max(lengths))


def _qkv(tokens, seed, heads=3, dim=8):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(tokens, heads, dim, generator=gen) for _ in range(3))


@pytest.mark.parametrize("lengths", LAYOUTS)
def test_flex_forward_equals_math(lengths):
    q, k, v = _qkv(sum(lengths), 1)
    ctx = _ctx(lengths)
    with force_backend("math"):
        ref = attention(q, k, v, ctx)
    with torch.no_grad(), force_backend("flex"):  # the real FlexAttention kernel (CPU has it forward only)
        out = attention(q, k, v, ctx)
    torch.testing.assert_close(out, ref, **TOL)
    # padding past cu_seqlens[-1] (Ulysses) attends only to itself, as in every backend
    pad = _qkv(3, 2)
    qp, kp, vp = (torch.cat((x, p)) for x, p in zip((q, k, v), pad))
    with torch.no_grad(), force_backend("flex"):
        out = attention(qp, kp, vp, ctx)
    torch.testing.assert_close(out[: sum(lengths)], ref, **TOL)
    with force_backend("math"):
        torch.testing.assert_close(out[sum(lengths) :], attention(*pad, _ctx([3])), **TOL)


@pytest.mark.parametrize("lengths", LAYOUTS)
def test_flex_gradients_equal_math(lengths):
    """On CPU torch's FlexAttention has no backward, so with gradients "flex" runs the same mask rule densely;
    this checks that rule's gradients. The CUDA test below checks the kernel's own."""
    ctx = _ctx(lengths)
    grads = {}
    for backend in ("math", "flex"):
        q, k, v = (x.requires_grad_() for x in _qkv(sum(lengths), 3))
        with force_backend(backend):
            out = attention(q, k, v, ctx)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = (out.detach(), q.grad, k.grad, v.grad)
    for got, want in zip(grads["flex"], grads["math"]):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward exists only on CUDA")
def test_flex_kernel_gradients_on_gpu():
    lengths = [300, 5, 900, 1]
    ctx = _ctx(lengths)
    grads = {}
    for backend, device in (("math", "cpu"), ("flex", "cuda")):
        q, k, v = (x.to(device).requires_grad_() for x in _qkv(sum(lengths), 4, heads=4, dim=64))
        with force_backend(backend):
            out = attention(q, k, v, ctx)
        out.square().sum().backward()
        grads[backend] = tuple(t.detach().cpu() for t in (out, q.grad, k.grad, v.grad))
    for got, want in zip(grads["flex"], grads["math"]):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)  # TF32 matmuls in the kernel


def test_block_mask_cached_by_contents():
    cu = torch.tensor([0, 5, 14], dtype=torch.int32)
    first = block_mask_for(cu, 14, "cpu")
    assert block_mask_for(cu.clone(), 14, "cpu") is first  # every block of a step: built once
    cu[1] = 7  # same tensor, same address, other samples: a pointer key would hand back the stale mask
    assert block_mask_for(cu, 14, "cpu") is not first
    assert block_mask_for(cu, 16, "cpu") is not first  # padding changes the mask too


def test_flex_selected_by_capability():
    gpu = dict(cuda=True, half=True, flash=False, flex=True)
    assert choose_backend(**gpu, tokens=75_000) == "flex"
    assert choose_backend(**gpu, tokens=attn.FLEX_MIN_TOKENS) == "sdpa_mask"  # short: one dense call is cheaper
    assert choose_backend(**{**gpu, "flex": False}, tokens=75_000) == "sdpa_loop"
    assert choose_backend(**{**gpu, "flash": True}, tokens=75_000) == "flash"
    assert choose_backend(**{**gpu, "half": False}, tokens=75_000) == "flex"  # fp32: flex has fp32 kernels
    assert choose_backend(cuda=False, half=False, tokens=75_000, flash=True, flex=True) == "sdpa_loop"


def test_mmdit_forward_under_flex_equals_math():
    cfg = PRESETS["tiny"]
    gen = torch.Generator().manual_seed(6)
    model = randomize_(MMDiT(cfg), gen).eval()
    c = cfg.latent_channels
    recs = [
        SampleRecord(text=torch.randn(n, cfg.text_dim, generator=gen), video=torch.randn(c, 2, 4, 4, generator=gen))
        for n in (5, 1, 9)
    ]
    batch = pack(recs, cfg.patch_size)
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        with force_backend("math"):
            ref = model(batch, t)
        with force_backend("flex"):
            out = model(batch, t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_flex_is_chosen_on_cuda_only_when_opted_in(monkeypatch):
    """The compiled CUDA path has not run on a GPU yet: automatic selection needs OMNITRAIN_FLEX_ATTENTION=1."""
    from omnitrain.model import attention

    monkeypatch.delenv(attention.FLEX_OPT_IN_ENV, raising=False)
    assert not attention.flex_opted_in()
    monkeypatch.setenv(attention.FLEX_OPT_IN_ENV, "1")
    assert attention.flex_opted_in() == attention.flex_available()
