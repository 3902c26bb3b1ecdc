"""Model FLOPs utilisation and throughput, as pure functions of numbers.

MFU = model FLOPs of one optimizer step / (step wall time x devices x peak FLOP/s of one device). "Model FLOPs" are
the FLOPs the model needs (forward + backward), not what the hardware executed: recomputed activations do not count,
so recompute lowers MFU as it should (PaLM's definition, also Megatron's and TorchTitan's).
"""

from __future__ import annotations


def dense_transformer_train_flops_per_token(params: float) -> float:
    """The 6N rule for a dense decoder (2N forward + 4N backward per token, attention scores left out).
    A sanity reference for MFU; our DiT's exact count comes from omnitrain.model.flops."""
    if params <= 0:
        raise ValueError(f"params must be > 0, got {params}")
    return 6.0 * params


def achieved_flops_per_device(flops_per_step: float, step_seconds: float, num_devices: int) -> float:
    """Model FLOP/s each device delivered during a step."""
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if flops_per_step < 0:
        raise ValueError(f"flops_per_step must be >= 0, got {flops_per_step}")
    return flops_per_step / (step_seconds * num_devices)


def mfu(
    flops_per_step: float, step_seconds: float, num_devices: int, peak_flops_per_device: float | None
) -> float | None:
    """Fraction of the devices' peak the model used in a step; None when the peak is unknown (never invented)."""
    if peak_flops_per_device is None:
        return None
    if peak_flops_per_device <= 0:
        raise ValueError(f"peak_flops_per_device must be > 0, got {peak_flops_per_device}")
    return achieved_flops_per_device(flops_per_step, step_seconds, num_devices) / peak_flops_per_device


def tokens_per_second(tokens: float, step_seconds: float) -> float:
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
    return tokens / step_seconds


__all__ = ["achieved_flops_per_device", "dense_transformer_train_flops_per_token", "mfu", "tokens_per_second"]
