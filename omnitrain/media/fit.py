"""Pixels to a bucket's shape: the first `frames` frames, resized to cover the bucket and centre-cropped (the aspect
ratio kept, nothing stretched), scaled to [-1, 1] as video VAEs expect."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from omnitrain.media.buckets import Bucket


def fit_frames(frames: np.ndarray | torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, bucket.frames, bucket.height, bucket.width] in [-1, 1]."""
    video = torch.as_tensor(np.asarray(frames))
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], not {list(video.shape)}")
    if video.shape[0] < bucket.frames:
        raise ValueError(f"the clip has {video.shape[0]} frames, the bucket {bucket} needs {bucket.frames}")
    video = video[: bucket.frames].permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    _, _, height, width = video.shape
    scale = max(bucket.height / height, bucket.width / width)
    size = (max(bucket.height, math.ceil(height * scale)), max(bucket.width, math.ceil(width * scale)))
    if size != (height, width):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - bucket.height) // 2, (size[1] - bucket.width) // 2
    video = video[:, :, top : top + bucket.height, left : left + bucket.width]
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """float [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (a VAE's output back to pixels)."""
    pixels = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()
