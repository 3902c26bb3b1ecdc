"""The request/response schema of POST /v1/generate (pydantic at the boundary) and tensor encoding."""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

Array = list | dict  # nested lists, or {"npy_b64": "..."}


def decode_array(value, field: str) -> torch.Tensor:
    try:
        if isinstance(value, dict):
            if set(value) != {"npy_b64"}:
                raise ValueError('an encoded array is {"npy_b64": <base64 of a .npy file>}')
            arr = np.load(io.BytesIO(base64.b64decode(value["npy_b64"])), allow_pickle=False)
        else:
            arr = np.asarray(value, dtype=np.float32)
    except Exception as e:
        raise ValueError(f"{field}: not a numeric array ({e})") from None
    if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
        raise ValueError(f"{field}: must hold finite numbers")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def encode_array(t: torch.Tensor) -> dict:
    buf = io.BytesIO()
    np.save(buf, t.detach().cpu().float().numpy(), allow_pickle=False)
    return {"npy_b64": base64.b64encode(buf.getvalue()).decode()}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Array = Field(description="Pre-encoded text embedding [tokens, textDim].")
    reference: Array | None = Field(None, description="Reference-image latent [C, 1, H, W].")
    context: Array | None = Field(None, description="Video-context latent [C, T, H, W].")
    frames: int = Field(4, ge=1, le=1024, description="Latent frames of the generated video.")
    height: int = Field(8, ge=1, le=4096, description="Latent height.")
    width: int = Field(8, ge=1, le=4096, description="Latent width.")
    steps: int | None = Field(None, ge=1, le=1000, description="Sampling steps (default: the model's).")
    method: Literal["euler", "heun"] | None = None
    shift: float | None = Field(None, gt=0)
    guidance: float = Field(1.0, ge=0, le=50, description="Classifier-free guidance scale (1 = off).")
    seed: int = Field(0, ge=0, description="Seed of the initial noise: same seed, same video.")
    return_latent: bool = Field(False, description="Include the latent (npy, base64); else shape and stats only.")

    @field_validator("text", "reference", "context")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        return v


__all__ = ["GenerateRequest", "decode_array", "encode_array"]
