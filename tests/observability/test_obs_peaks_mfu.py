"""Peak table lookups and the MFU arithmetic."""

import pytest

from omnitrain.observability import mfu as m
from omnitrain.observability.peaks import (
    ENV_PEAK_FLOPS,
    configured_peak_flops,
    lookup_device,
    peak_flops,
    resolve_peak_flops,
)


@pytest.mark.parametrize(
    "nvml_name, expected",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA B200", "B200"),
    ],
)
def test_nvml_names_map_to_datasheet_entries(nvml_name, expected):
    assert lookup_device(nvml_name).name == expected


def test_dense_numbers_are_half_the_sparse_datasheet_figures():
    # H100 SXM datasheet: BF16 1,979 TFLOPS and FP8 3,958 TFLOPS "with sparsity"; dense is half.
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(1979e12 / 2, rel=1e-3)
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp8") == pytest.approx(3958e12 / 2, rel=1e-3)
    # A100: 312 TFLOPS BF16 dense, no FP8 path at all.
    assert peak_flops("NVIDIA A100-SXM4-40GB", "bf16") == 312e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "fp8") is None


def test_unknown_devices_and_cpu_get_no_peak():
    assert lookup_device("Tesla T4") is None
    assert lookup_device("cpu") is None
    assert lookup_device(None) is None
    assert resolve_peak_flops(None, "fp32", environ={}) is None


def test_configured_peak_wins_and_bad_values_name_the_variable():
    assert configured_peak_flops({ENV_PEAK_FLOPS: "1e11"}) == 1e11
    assert resolve_peak_flops("NVIDIA H100 PCIe", "bf16", {ENV_PEAK_FLOPS: "2e12"}) == 2e12
    with pytest.raises(ValueError, match=ENV_PEAK_FLOPS):
        configured_peak_flops({ENV_PEAK_FLOPS: "fast"})
    with pytest.raises(ValueError, match=ENV_PEAK_FLOPS):
        configured_peak_flops({ENV_PEAK_FLOPS: "-1"})


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        peak_flops("NVIDIA H100 PCIe", "int4")


def test_mfu_of_a_dense_gpt_step_by_the_6n_rule():
    # A 7B dense GPT, 4M tokens per step, 512 H100 SXM (bf16), 1.5 s per step.
    params, tokens, devices, seconds = 7e9, 4 * 2**20, 512, 1.5
    flops = m.dense_transformer_train_flops_per_token(params) * tokens
    peak = peak_flops("NVIDIA H100 80GB HBM3", "bf16")
    value = m.mfu(flops, seconds, devices, peak)
    # 6 * 7e9 * 4194304 / (1.5 * 512 * 989.4e12) = 0.2318...
    assert 0.2317 < value < 0.2319
    assert m.achieved_flops_per_device(flops, seconds, devices) == pytest.approx(value * peak)


def test_mfu_is_none_without_a_peak_and_rejects_nonsense():
    assert m.mfu(1e12, 1.0, 1, None) is None
    with pytest.raises(ValueError, match="step_seconds"):
        m.mfu(1e12, 0.0, 1, 1e12)
    with pytest.raises(ValueError, match="num_devices"):
        m.mfu(1e12, 1.0, 0, 1e12)
    assert m.tokens_per_second(1000, 0.5) == 2000


def test_dit_flops_agree_with_the_dense_transformer_formula():
    """The MFU numerator (omnitrain.model.flops) against PaLM's 6N + 12·depth·hidden·L per token for training,
    with N counted from the real model's parameters that act on every token (adaLN and the timestep MLP run once
    per sample)."""
    from omnitrain.model.config import PRESETS
    from omnitrain.model.flops import TokenCounts, training_flops
    from omnitrain.model.mmdit import MMDiT

    cfg = PRESETS["small"]
    per_sample = (".adaln.", "embed.time.")
    params = sum(p.numel() for n, p in MMDiT(cfg).named_parameters() if not any(k in f".{n}" for k in per_sample))
    for text, patches in ((16, 64), (64, 960)):  # short and long sequences
        counts = TokenCounts.from_lengths([text] * 8, [patches] * 8)
        reference = (
            m.dense_transformer_train_flops_per_token(params) * counts.tokens
            + 12 * cfg.depth * cfg.hidden_size * counts.sum_sq_seqlens
        )
        assert training_flops(cfg, counts) == pytest.approx(reference, rel=0.03)
