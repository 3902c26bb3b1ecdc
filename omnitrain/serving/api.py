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


# Limits of POST /v1/videos: what one request may ask the model (and the VAE) to produce or read.
MAX_PROMPT_CHARS = 2000
MAX_REFERENCE_IMAGES = 4
MAX_VIDEO_FRAMES = 129
MAX_VIDEO_SIDE = 1024


class VideoRequest(BaseModel):
    """A prompt (and optional reference images and context clip) in, an MP4 out: the job's own encoders turn the
    media into conditions, the model samples, the VAE decodes."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What the video shows.")
    reference_images: list[str] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_IMAGES,
        description="Reference images (PNG or JPEG, base64), fitted to the output size: image-to-video.",
    )
    context_video: str | None = Field(None, description="A context clip (MP4, base64): video-to-video.")
    frames: int = Field(9, ge=1, le=MAX_VIDEO_FRAMES, description="Frames of the video: 1 + 4k for a Wan VAE.")
    height: int = Field(
        64, ge=8, le=MAX_VIDEO_SIDE, description="Height in pixels (a multiple of the VAE stride x patch)."
    )
    width: int = Field(
        64, ge=8, le=MAX_VIDEO_SIDE, description="Width in pixels (a multiple of the VAE stride x patch)."
    )
    fps: float = Field(8.0, ge=1, le=120, description="Frame rate of the MP4, at least 1.")
    steps: int | None = Field(None, ge=1, le=1000, description="Sampling steps (default: the model's).")
    method: Literal["euler", "heun"] | None = None
    shift: float | None = Field(None, gt=0, le=100)
    guidance: float = Field(1.0, ge=0, le=50, description="Classifier-free guidance scale (1 = off).")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the initial noise: same seed, same video.")
    response: Literal["mp4", "latent"] = Field("mp4", description="The MP4 itself, or JSON with the latent.")

    @field_validator("prompt")
    @classmethod
    def _has_words(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must hold words, not only spaces")
        return v


def decode_base64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{field}: not base64 ({e})") from None


__all__ = ["GenerateRequest", "VideoRequest", "decode_array", "decode_base64", "encode_array"]
