"""Media in and out of the served model: a prompt, reference images and a context clip through the job's frozen
encoders into conditions; the sampled latent through the VAE's decoder into an MP4.

The encoders are the training job's (`spec.data.encoders`, carried in the promoted model file's meta or read from
the trainer config), so the served model sees conditions encoded as it was trained on them. Bad media is a
RequestError naming the field (a 400), never a 500."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnitrain.encoders import Encoders, intra_op_threads
from omnitrain.media.buckets import Bucket, frame_counts
from omnitrain.media.fit import fit_frames, to_uint8_frames
from omnitrain.media.image import decode_image
from omnitrain.media.video import MediaError, MediaLimits, decode_video, encode_video
from omnitrain.serving.api import MAX_VIDEO_FRAMES, MAX_VIDEO_SIDE, VideoRequest, decode_base64
from omnitrain.spec import EncodersSpec

LIMITS = MediaLimits(max_bytes=48 << 20, max_frames=1024, max_side=4096)


class MediaRequestError(ValueError):
    """Media the server refuses; the message names the field."""


@dataclass
class MediaConditions:
    text: torch.Tensor  # [tokens, width]
    reference: torch.Tensor | None  # latent [C, n, h, w]
    context: torch.Tensor | None  # latent [C, t, h, w]
    latent_shape: tuple[int, int, int, int]


class MediaCodec:
    """The job's encoders, loaded once (in the server's load thread)."""

    def __init__(self, spec: EncodersSpec, device: str = "cpu"):
        self.spec = spec
        self.encoders = Encoders.load(spec, device)
        self.video = self.encoders.video

    @property
    def stride(self) -> int:
        return self.video.spatial_stride

    def _latent(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.video(pixels, generator=None)  # the mean: a condition has no reason to be noisy

    def conditions(self, req: VideoRequest, patch_size: tuple[int, int, int]) -> MediaConditions:
        step = self.stride * max(patch_size[1], patch_size[2])
        if req.height % step or req.width % step:
            raise MediaRequestError(
                f"height/width: {req.height}x{req.width} must be multiples of {step} (the VAE's stride "
                f"{self.stride} x the patch size)"
            )
        allowed = frame_counts(MAX_VIDEO_FRAMES, self.video.temporal_stride)
        if req.frames not in allowed:
            raise MediaRequestError(
                f"frames: {req.frames} is not 1 + {self.video.temporal_stride}k (the VAE's time stride); "
                f"ask for one of {allowed[:6]}..."
            )
        with intra_op_threads(self.spec.cpu_threads, self.video.device):
            text = self.encoders.text(req.prompt)
            reference = None
            if req.reference_images:
                still = Bucket(1, req.height, req.width)
                latents = []
                for i, value in enumerate(req.reference_images):
                    field = f"reference_images[{i}]"
                    try:
                        pixels = decode_image(decode_base64(value, field), LIMITS)
                    except (MediaError, ValueError) as e:
                        raise MediaRequestError(f"{field}: {e}") from None
                    latents.append(self._latent(fit_frames(pixels[None], still)))
                reference = torch.cat(latents, dim=1)
            context = None
            if req.context_video is not None:
                try:
                    clip = decode_video(decode_base64(req.context_video, "context_video"), LIMITS)
                except (MediaError, ValueError) as e:
                    raise MediaRequestError(f"context_video: {e}") from None
                counts = [n for n in allowed if n <= min(clip.frames.shape[0], req.frames)]
                context = self._latent(fit_frames(clip.frames, Bucket(counts[-1], req.height, req.width)))
        shape = self.video.latent_shape(req.frames, req.height, req.width)
        return MediaConditions(text, reference, context, shape)

    @torch.no_grad()
    def to_mp4(self, latent: torch.Tensor, fps: float) -> bytes:
        """latent [C, t, h, w] (normalised as in training) -> MP4 bytes."""
        with intra_op_threads(self.spec.cpu_threads, self.video.device):
            pixels = self.video.decode(latent)
        return encode_video(to_uint8_frames(pixels), fps=fps)


__all__ = ["MAX_VIDEO_SIDE", "MediaCodec", "MediaConditions", "MediaRequestError"]
