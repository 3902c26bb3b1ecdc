import dataclasses

import pytest
import torch

from omnitrain.model.attention import attention, force_backend, select_backend
from omnitrain.model.config import PRESETS
from omnitrain.model.mmdit import BlockContext, MMDiT, randomize_
from omnitrain.model.packing import SampleRecord, pack, sample_tokens
from omnitrain.model.patchify import patchify, unpatchify

CFG = PRESETS["tiny"]


def _records(gen, specs):
    """specs: (text_len, frames, side, with_reference, with_context)"""
    out = []
    for text_len, frames, side, ref, ctx in specs:
        c = CFG.latent_channels
        out.append(
            SampleRecord(
                text=torch.randn(text_len, CFG.text_dim, generator=gen),
                video=torch.randn(c, frames, side, side, generator=gen),
                reference=torch.randn(c, 1, side, side, generator=gen) if ref else None,
                context=torch.randn(c, frames, side, side, generator=gen) if ctx else None,
            )
        )
    return out


SPECS = [(5, 2, 4, False, False), (3, 1, 6, True, False), (7, 3, 2, False, True), (2, 2, 4, True, True)]


def _model(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return randomize_(MMDiT(CFG), gen).eval()


def test_patchify_round_trip():
    x = torch.randn(4, 2, 6, 8)
    tokens = patchify(x, (1, 2, 2))
    assert tokens.shape == (2 * 3 * 4, 16)
    assert torch.equal(unpatchify(tokens, (2, 3, 4), (1, 2, 2), 4), x)
    with pytest.raises(ValueError, match="patchSize"):
        patchify(torch.randn(4, 1, 5, 4), (1, 2, 2))


def test_pack_layout_and_lengths():
    recs = _records(torch.Generator().manual_seed(1), SPECS)
    batch = pack(recs, CFG.patch_size)
    assert batch.seqlens == [sample_tokens(r, CFG.patch_size) for r in recs]
    assert batch.cu_seqlens.dtype == torch.int32 and int(batch.cu_seqlens[-1]) == batch.num_tokens
    # order inside each sample: text, reference, context, video
    for i in range(len(recs)):
        kinds = batch.kind[batch.sample_id == i]
        assert torch.all(kinds[1:] >= kinds[:-1])
    assert int(batch.target_mask.sum()) == batch.video.shape[0]


def test_packed_forward_equals_per_sample_forward():
    gen = torch.Generator().manual_seed(2)
    recs = _records(gen, SPECS)
    model = _model()
    t = torch.rand(len(recs), generator=gen)
    with torch.no_grad():
        packed = model(pack(recs, CFG.patch_size), t)
        singles = torch.cat([model(pack([r], CFG.patch_size), t[i : i + 1]) for i, r in enumerate(recs)])
    assert packed.shape == (sum(sample_tokens(r, CFG.patch_size) for r in recs), CFG.patch_dim)
    assert packed.abs().mean() > 1e-3  # a randomized model predicts something
    torch.testing.assert_close(packed, singles, rtol=1e-4, atol=1e-5)


def test_samples_do_not_see_each_other():
    gen = torch.Generator().manual_seed(3)
    recs = _records(gen, SPECS[:2])
    other = _records(gen, SPECS[:2])
    model = _model()
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        a = model(pack([recs[0], recs[1]], CFG.patch_size), t)
        b = model(pack([recs[0], other[1]], CFG.patch_size), t)
    n0 = sample_tokens(recs[0], CFG.patch_size)
    torch.testing.assert_close(a[:n0], b[:n0])
    assert not torch.allclose(a[n0:], b[n0:])


def _ctx(lengths, tokens=None):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return BlockContext(sample_cond=None, cond_row=None, cos=None, sin=None, cu_seqlens=cu, max_seqlen=max(lengths))


@pytest.mark.parametrize("lengths", [[5, 9, 1, 12], [17]])
def test_sdpa_mask_equals_per_sample_attention(lengths):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(sum(lengths), 3, 8, generator=gen) for _ in range(3))
    ctx = _ctx(lengths)
    with force_backend("math"):
        ref = attention(q, k, v, ctx)
    for backend in ("sdpa_mask", "sdpa_loop"):
        with force_backend(backend):
            torch.testing.assert_close(attention(q, k, v, ctx), ref, rtol=1e-5, atol=1e-5)
    # padding past cu_seqlens[-1] (sequence parallelism) attends only to itself
    qp, kp, vp = (torch.cat((x, torch.randn(3, 3, 8, generator=gen))) for x in (q, k, v))
    for backend in ("sdpa_mask", "sdpa_loop", "math"):
        with force_backend(backend):
            torch.testing.assert_close(attention(qp, kp, vp, ctx)[: sum(lengths)], ref, rtol=1e-5, atol=1e-5)


def test_backend_selected_by_capability():
    cpu = torch.randn(4, 2, 8)
    assert select_backend(cpu) == "sdpa_loop"  # never flash on CPU, even in bf16
    assert select_backend(cpu.bfloat16()) == "sdpa_loop"
    if torch.cuda.is_available():
        from omnitrain.model.attention import flash_available

        want = "flash" if flash_available() else "sdpa_mask"
        assert select_backend(cpu.cuda().bfloat16()) == want
        assert select_backend(cpu.cuda()) == "sdpa_mask"  # fp32: flash-attn has no fp32 kernels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_attention_matches_reference():
    gen = torch.Generator().manual_seed(5)
    lengths = [33, 70, 5]
    q, k, v = (torch.randn(sum(lengths), 4, 64, generator=gen) for _ in range(3))
    ctx = _ctx(lengths)
    with force_backend("math"):
        ref = attention(q, k, v, ctx)
    out = attention(q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(), ctx)
    torch.testing.assert_close(out.float().cpu(), ref, rtol=2e-2, atol=2e-2)


def test_heads_read_from_shape():
    """A tensor-parallel shard has fewer heads than the config: the attention module must not care."""
    model = _model()
    attn = model.blocks[0].attn
    shard = dataclasses.replace(CFG, hidden_size=CFG.hidden_size // 2, num_heads=CFG.num_heads // 2)
    x = torch.randn(10, CFG.hidden_size)
    ctx = _ctx([4, 6])
    from omnitrain.model.rope import rope_cos_sin

    ctx.cos, ctx.sin = rope_cos_sin(torch.zeros(10, 3), CFG.head_dim)
    q = attn.q(x).view(10, -1, CFG.head_dim)[:, : shard.num_heads]
    assert attn.core(q, q, q, ctx).shape == (10, shard.num_heads, CFG.head_dim)


def test_gradients_reach_every_parameter():
    gen = torch.Generator().manual_seed(6)
    recs = _records(gen, SPECS)
    model = _model()
    out = model(pack(recs, CFG.patch_size), torch.rand(len(recs), generator=gen))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_bf16_autocast_forward_and_backward():
    """The GPU bf16 path's dtype handling, exercised with CPU autocast: q/k/v reach attention in one dtype."""
    gen = torch.Generator().manual_seed(7)
    recs = _records(gen, SPECS)
    model = _model()
    batch, t = pack(recs, CFG.patch_size), torch.rand(len(recs), generator=gen)
    seen = []
    core = model.blocks[0].attn.core
    handle = core.register_forward_hook(lambda m, args, out: seen.append({a.dtype for a in args[:3]}))
    with torch.no_grad():
        ref = model(batch, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch, t)
    handle.remove()
    assert seen[-1] == {torch.bfloat16}
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.05)
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def _per_token_forward(model: MMDiT, batch, t):
    """The model as it was (every adaLN Linear on every token's copy of its sample's conditioning): the reference
    bench/modulation.py times side by side, loaded from there so the bench and this test compare the same thing."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "modulation.py"
    spec = importlib.util.spec_from_file_location("bench_modulation", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.per_token_forward(model, batch, t)


def test_per_sample_modulation_equals_the_per_token_computation():
    """Same parameters, same outputs and gradients as when adaLN ran per token: old checkpoints mean the same."""
    model = _model(3).train()
    batch = pack(_records(torch.Generator().manual_seed(5), SPECS), CFG.patch_size)
    t = torch.tensor([0.1, 0.5, 0.9, 0.3])
    new = model(batch, t)
    grads_new = torch.autograd.grad(new.square().sum(), list(model.parameters()))
    old = _per_token_forward(model, batch, t)
    grads_old = torch.autograd.grad(old.square().sum(), list(model.parameters()))
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), grads_new, grads_old):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # the conditioning really is per sample: one row each, not one per token
    _, ctx = model.embed(batch, t)
    assert ctx.sample_cond.shape[0] == batch.num_samples < batch.num_tokens
