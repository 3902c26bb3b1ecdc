"""Peak dense FLOP/s per device, the denominator of MFU.

Numbers are the vendors' published datasheet figures for ONE GPU, dense (NVIDIA's datasheets print the 2:4
structured-sparsity figure with an asterisk; those are halved here). An unknown device gets None: MFU against an
invented peak would be a number nobody can trust. On CPU (or any device not in the table) MFU is reported only when
a peak is configured explicitly (OMNITRAIN_PEAK_FLOPS, FLOP/s per device).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

TERA = 1e12

# Training precisions we name; "fp32" means plain FP32 (non-tensor-core) matmuls, "tf32" tensor-core TF32.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")

# Environment variable: the peak FLOP/s of one device, used when the table does not know the device (e.g. CPU).
ENV_PEAK_FLOPS = "OMNITRAIN_PEAK_FLOPS"


@dataclass(frozen=True)
class DevicePeaks:
    """Dense peak FLOP/s of one device by precision; None where the device has no such path (A100 has no FP8)."""

    name: str
    fp32: float
    tf32: float
    bf16: float
    fp16: float
    fp8: float | None

    def for_precision(self, precision: str) -> float | None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        return getattr(self, precision)


# Datasheets: NVIDIA H100 Tensor Core GPU datasheet (SXM5 / PCIe / NVL), H200 datasheet (SXM / NVL),
# A100 datasheet (SXM4 / PCIe, 40 and 80 GB identical compute), HGX B200 (per GPU = system figure / 8).
H100_SXM = DevicePeaks(
    "H100 SXM", fp32=67 * TERA, tf32=494.7 * TERA, bf16=989.4 * TERA, fp16=989.4 * TERA, fp8=1978.9 * TERA
)
H100_PCIE = DevicePeaks(
    "H100 PCIe", fp32=51.2 * TERA, tf32=378 * TERA, bf16=756.5 * TERA, fp16=756.5 * TERA, fp8=1513 * TERA
)
H100_NVL = DevicePeaks(
    "H100 NVL", fp32=60 * TERA, tf32=417.5 * TERA, bf16=835.5 * TERA, fp16=835.5 * TERA, fp8=1670.5 * TERA
)
H200_SXM = DevicePeaks(
    "H200 SXM", fp32=67 * TERA, tf32=494.7 * TERA, bf16=989.4 * TERA, fp16=989.4 * TERA, fp8=1978.9 * TERA
)
H200_NVL = DevicePeaks(
    "H200 NVL", fp32=60 * TERA, tf32=417.5 * TERA, bf16=835.5 * TERA, fp16=835.5 * TERA, fp8=1670.5 * TERA
)
A100 = DevicePeaks("A100", fp32=19.5 * TERA, tf32=156 * TERA, bf16=312 * TERA, fp16=312 * TERA, fp8=None)
B200 = DevicePeaks("B200", fp32=75 * TERA, tf32=1100 * TERA, bf16=2250 * TERA, fp16=2250 * TERA, fp8=4500 * TERA)

# (pattern over the normalised NVML name, peaks); first match wins, so the more specific names come first.
# NVML names seen in the wild: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL",
# "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA B200".
_NAME_PATTERNS: tuple[tuple[str, DevicePeaks], ...] = (
    (r"\bh100\b.*\bnvl\b", H100_NVL),
    (r"\bh100\b.*\bpcie\b", H100_PCIE),
    (r"\bh100\b", H100_SXM),
    (r"\bh200\b.*\bnvl\b", H200_NVL),
    (r"\bh200\b", H200_SXM),
    (r"\ba100\b", A100),
    (r"\bb200\b", B200),
)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def lookup_device(name: str | None) -> DevicePeaks | None:
    """The peaks of a device by its NVML (or torch.cuda) name; None when the device is not in the table."""
    if not name:
        return None
    normalised = _normalise(name)
    for pattern, peaks in _NAME_PATTERNS:
        if re.search(pattern, normalised):
            return peaks
    return None


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of one device in a precision; None for unknown devices or precisions it lacks."""
    peaks = lookup_device(device_name)
    return peaks.for_precision(precision) if peaks else None


def configured_peak_flops(environ: dict[str, str] | None = None) -> float | None:
    """The peak set by the user (FLOP/s per device), e.g. for CPU runs; None when unset."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PEAK_FLOPS, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_PEAK_FLOPS}={raw!r} is not a number; set it to the peak FLOP/s of one device, e.g. 989.4e12"
        ) from None
    if value <= 0:
        raise ValueError(f"{ENV_PEAK_FLOPS}={raw!r} must be > 0 (FLOP/s of one device)")
    return value


def resolve_peak_flops(device_name: str | None, precision: str, environ: dict[str, str] | None = None) -> float | None:
    """The peak MFU is computed against: an explicit configuration wins, then the table, else None (no MFU)."""
    configured = configured_peak_flops(environ)
    if configured is not None:
        return configured
    return peak_flops(device_name, precision)


__all__ = [
    "DevicePeaks",
    "ENV_PEAK_FLOPS",
    "PRECISIONS",
    "configured_peak_flops",
    "lookup_device",
    "peak_flops",
    "resolve_peak_flops",
]
