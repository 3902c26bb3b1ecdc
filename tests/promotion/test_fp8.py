import pytest
import torch
from torch import nn

from omnitrain.model.fp8 import (
    FP8_DTYPE,
    FP8Linear,
    amax_scale,
    dequantize,
    quantize,
    quantize_linears,
    scaled_mm_supported,
)
from tests.promotion.helpers import random_conditions, tiny_model


@pytest.mark.parametrize("granularity", ["tensor", "rowwise"])
def test_emulation_equals_quantize_dequantize_reference(granularity):
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    x = torch.randn(5, 7, 48) * 3
    fp8 = FP8Linear(linear, granularity, use_scaled_mm=False)
    assert fp8.weight_fp8.dtype == FP8_DTYPE
    # Reference written out independently: the e4m3 grid by rounding through the dtype.
    w = linear.weight.detach()
    w_amax = w.abs().amax() if granularity == "tensor" else w.abs().amax(1, keepdim=True)
    w_dq = (w / (w_amax / 448)).to(FP8_DTYPE).float() * (w_amax / 448)
    a = x.reshape(-1, 48)
    a_amax = a.abs().amax() if granularity == "tensor" else a.abs().amax(1, keepdim=True)
    a_dq = (a / (a_amax / 448)).to(FP8_DTYPE).float() * (a_amax / 448)
    expected = (a_dq @ w_dq.t() + linear.bias.detach()).reshape(5, 7, 32)
    torch.testing.assert_close(fp8(x), expected, rtol=1e-6, atol=1e-6)


def test_quantization_saturates_instead_of_overflowing():
    x = torch.tensor([[1.0, -1000.0, 2.0]])
    q = quantize(x, torch.tensor(1.0))
    assert torch.isfinite(q.float()).all() and float(q.float().min()) == -448.0
    scale = amax_scale(x, "rowwise")
    assert float(dequantize(quantize(x, scale), scale)[0, 1]) == -1000.0


def test_fp8_model_stays_within_tolerance_of_fp32():
    model, adapter = tiny_model(seed=1)
    from omnitrain.model.denoiser import Denoiser

    g = torch.Generator().manual_seed(0)
    conds = [random_conditions(g, text=6, reference=4) for _ in range(2)]
    videos = [torch.randn(12, 16, generator=g), torch.randn(8, 16, generator=g)]
    with torch.no_grad():
        ref = torch.cat(Denoiser(model, adapter).velocity_masked(conds, videos, 0.7))
        replaced = quantize_linears(model, "rowwise", skip=("head.proj",))
        assert "blocks.0.attn.q" in replaced and "head.proj" not in replaced
        out = torch.cat(Denoiser(model, adapter).velocity_masked(conds, videos, 0.7))
    rel = float((out - ref).norm() / ref.norm())
    # e4m3 keeps 3 mantissa bits (relative rounding <= 6.25%); errors of independent roundings mostly average out.
    assert 0 < rel < 0.05, rel


@pytest.mark.skipif(
    not scaled_mm_supported(torch.device("cuda", 0)) if torch.cuda.is_available() else True,
    reason="needs an sm89+ GPU for torch._scaled_mm",
)
@pytest.mark.parametrize("granularity", ["tensor", "rowwise"])
def test_scaled_mm_matches_emulation_on_gpu(granularity):
    torch.manual_seed(0)
    linear = nn.Linear(64, 128).cuda()
    x = torch.randn(32, 64, device="cuda")
    hw = FP8Linear(linear, granularity, use_scaled_mm=True)(x)
    emu = FP8Linear(linear, granularity, use_scaled_mm=False)(x)
    torch.testing.assert_close(hw, emu, rtol=1e-3, atol=1e-3)
