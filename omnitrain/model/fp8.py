"""FP8 (e4m3) linear layers for inference: weights stored in float8_e4m3fn with per-tensor or per-output-channel
(rowwise) scales, activations quantized dynamically per call (per tensor, or per token with rowwise weights).

Storing FP8 weights and upcasting before a bf16 matmul saves memory but no time; the speed comes from the scaled
matmul (`torch._scaled_mm`), which needs sm89+ (Ada/Hopper). That path is selected by a capability check; everywhere
else `emulated_scaled_mm` computes the same thing in fp32 (dequantize, then matmul), so the numerics of the FP8
model are testable on CPU: the two differ only in accumulation order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
# Scales never reach zero: an all-zero row would otherwise divide by zero.
_MIN_AMAX = 1e-12

Granularity = Literal["tensor", "rowwise"]


def amax_scale(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Scale s with x / s inside the e4m3 range: a scalar (tensor) or one per row, shaped [rows, 1] (rowwise)."""
    x = x.detach().float()
    if granularity == "tensor":
        amax = x.abs().amax()
    elif granularity == "rowwise":
        amax = x.abs().amax(dim=-1, keepdim=True)
    else:
        raise ValueError(f"granularity must be 'tensor' or 'rowwise', got {granularity!r}")
    return amax.clamp(min=_MIN_AMAX) / FP8_MAX


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale rounded to e4m3 (saturating: values past +-448 would otherwise become NaN)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def emulated_scaled_mm(
    a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """What `torch._scaled_mm(a_q, w_q.t(), a_scale, w_scale.t())` computes, in fp32 on any device."""
    out = dequantize(a_q, a_scale) @ dequantize(w_q, w_scale).t()
    return out if bias is None else out + bias.float()


def scaled_mm_supported(device: torch.device) -> bool:
    """FP8 tensor-core matmuls exist from compute capability 8.9 (Ada, Hopper) on."""
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Linear(nn.Module):
    """A frozen nn.Linear with e4m3 weights. `use_scaled_mm=None` picks the hardware path when the device has it."""

    def __init__(self, linear: nn.Linear, granularity: Granularity = "rowwise", use_scaled_mm: bool | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.granularity: Granularity = granularity
        weight = linear.weight.detach()
        scale = amax_scale(weight, granularity)
        self.register_buffer("weight_fp8", quantize(weight, scale))
        self.register_buffer("weight_scale", scale.reshape(-1, 1) if granularity == "rowwise" else scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.use_scaled_mm = use_scaled_mm

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, granularity={self.granularity}"

    def _hardware_path(self, x: torch.Tensor) -> bool:
        if self.use_scaled_mm is not None:
            return self.use_scaled_mm
        # _scaled_mm wants both matmul dimensions in multiples of 16.
        return scaled_mm_supported(x.device) and self.in_features % 16 == 0 and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        a = x.reshape(-1, self.in_features)
        a_scale = amax_scale(a, self.granularity)  # dynamic: per call, per token with rowwise weights
        a_q = quantize(a, a_scale)
        if self._hardware_path(x):
            w_scale = self.weight_scale.reshape(1, -1) if self.granularity == "rowwise" else self.weight_scale
            out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.bfloat16
            out = torch._scaled_mm(
                a_q,
                self.weight_fp8.t(),
                scale_a=a_scale,
                scale_b=w_scale,
                bias=None if self.bias is None else self.bias.to(out_dtype),
                out_dtype=out_dtype,
            )
        else:
            out = emulated_scaled_mm(a_q, a_scale, self.weight_fp8, self.weight_scale, self.bias)
        return out.reshape(*lead, self.out_features).to(x.dtype)


def quantize_linears(
    model: nn.Module, granularity: Granularity = "rowwise", skip: Iterable[str] = (), use_scaled_mm: bool | None = None
) -> list[str]:
    """Replace every nn.Linear of `model` (in place) by an FP8Linear, except modules whose qualified name starts
    with one of `skip`. Returns the names replaced."""
    skip = tuple(skip)
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(full == s or full.startswith(s + ".") for s in skip):
                setattr(module, child_name, FP8Linear(child, granularity, use_scaled_mm))
                replaced.append(full)
    return replaced


__all__ = [
    "FP8Linear",
    "FP8_DTYPE",
    "FP8_MAX",
    "amax_scale",
    "dequantize",
    "emulated_scaled_mm",
    "quantize",
    "quantize_linears",
    "scaled_mm_supported",
]
