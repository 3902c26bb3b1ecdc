"""The inference engine: loads a promoted model (FP8 linears optional), turns API requests into conditions and
noise, and runs batches of them through the cached-condition sampler."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from omnitrain.checkpoint_paths import MANIFEST_NAME, parse_step
from omnitrain.model.artifact import CacheFidelity, ModelArtifact, condition_cache_fidelity, load_artifact, load_teacher
from omnitrain.model.conditions import Conditions
from omnitrain.model.denoiser import Denoiser
from omnitrain.model.fp8 import quantize_linears
from omnitrain.model.patchify import patchify, unpatchify
from omnitrain.model.sampling import SamplerConfig, function_evaluations
from omnitrain.serving.api import GenerateRequest, VideoRequest, decode_array, encode_array
from omnitrain.serving.media import MediaCodec, MediaRequestError
from omnitrain.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)


# One request's video tokens (latent frames x height x width / patch): the noise, the K/V and the activations of a
# sampling step grow with it. 65,536 is a 129-frame 512x512 video at the default strides and patch.
MAX_VIDEO_TOKENS = 1 << 16


class RequestError(ValueError):
    """A request the model cannot run; the message names the field."""


@dataclass
class Prepared:
    conditions: Conditions
    noise: torch.Tensor  # [video tokens, patch_dim]
    shape: tuple[int, int, int, int]
    sampler: SamplerConfig
    seed: int
    return_latent: bool = False  # the latent as npy/base64 in the JSON answer
    keep_tensor: bool = False  # the latent tensor itself under "latent_tensor" (POST /v1/videos decodes it)

    @property
    def batch_key(self):
        return self.sampler


class InferenceEngine:
    def __init__(
        self,
        checkpoint: str,
        fp8: bool = True,
        metrics: ServerMetrics | None = None,
        skip_fp8: tuple[str, ...] = ("embed", "head.proj"),
        config_path: str | None = None,
    ):
        self.checkpoint, self.fp8, self.skip_fp8 = checkpoint, fp8, skip_fp8
        self.config_path = config_path
        self.metrics = metrics or ServerMetrics()
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self.denoiser: Denoiser | None = None
        self.config = None
        self.sampler_defaults: dict = {}
        self.cache: CacheFidelity | None = None  # set by load: is the cached view the trained model?
        self.media: MediaCodec | None = None  # the job's encoders, when it was trained with spec.data.encoders

    def load(self) -> None:
        """Runs once (in a background thread of the server): readyz turns ready only when this has finished."""
        try:
            started = time.monotonic()
            art, encoders = self._load_model()
            replaced = quantize_linears(art.model, "rowwise", skip=self.skip_fp8) if self.fp8 else []
            self.denoiser = Denoiser(art.model, art.adapter)
            self.config, self.sampler_defaults = art.config, dict(art.sampler)
            self.cache = condition_cache_fidelity(art)
            if encoders is not None:
                self.media = self._load_media(encoders, art.config)
            self.metrics.condition_cache_exact.set(int(self.cache.exact))
            log.info("loaded %s in %.1fs (%d FP8 linears)", self.checkpoint, time.monotonic() - started, len(replaced))
            log.info("condition cache: %s (%s)", "exact" if self.cache.exact else "approximate", self.cache.reason)
            self.loaded.set()
            self.metrics.ready.set(1)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load %s: %s", self.checkpoint, self.load_error)

    def _load_media(self, encoders: dict, config) -> MediaCodec:
        from omnitrain.spec import EncodersSpec

        media = MediaCodec(EncodersSpec.model_validate(encoders))
        media.encoders.check_model(config.latent_channels, config.text_dim, config.patch_size)
        log.info("encoders: %s + %s (POST /v1/videos)", media.spec.vae.class_name, media.spec.text.path)
        return media

    def _load_model(self) -> tuple[ModelArtifact, dict | None]:
        """A model file; or, without distillation, a training checkpoint: a step folder or the job's checkpoint
        folder (its newest complete step), whose model dimensions come from the trainer config. With it, the
        job's encoders (spec.data.encoders), from the model file's meta or the trainer config."""
        path = Path(self.checkpoint)
        trainer_encoders = None
        if self.config_path is not None:
            trainer_encoders = self._trainer_config().spec.data.encoders
        encoders = trainer_encoders.to_wire() if trainer_encoders is not None else None
        if not path.is_dir():
            art = load_artifact(path)
            return art, art.meta.get("encoders") or encoders
        if self.config_path is None:
            raise ValueError(f"{path} is a checkpoint folder: pass --config (the trainer config) for its model")
        trainer_config = self._trainer_config()
        steps = {
            parse_step(p.name): p
            for p in path.iterdir()
            if parse_step(p.name) is not None and (p / MANIFEST_NAME).is_file()
        }
        return load_teacher(steps[max(steps)] if steps else path, trainer_config.spec.model.resolve()), encoders

    def _trainer_config(self):
        import yaml

        from omnitrain.spec import TrainerConfig

        assert self.config_path is not None
        with open(self.config_path) as f:
            return TrainerConfig.model_validate(yaml.safe_load(f))

    def prepare(self, req: GenerateRequest) -> Prepared:
        cfg = self.config
        try:
            text = decode_array(req.text, "text")
            reference = None if req.reference is None else decode_array(req.reference, "reference")
            context = None if req.context is None else decode_array(req.context, "context")
        except ValueError as e:
            raise RequestError(str(e)) from None
        if text.ndim != 2 or text.shape[1] != cfg.text_dim:
            raise RequestError(f"text: expected [tokens, {cfg.text_dim}], got {list(text.shape)}")
        return self._prepare(
            text, reference, context, (req.frames, req.height, req.width), req, req.seed, req.return_latent, 1
        )

    def prepare_video(self, req: VideoRequest) -> Prepared:
        """A prompt (+ reference images, context clip) through the job's encoders into the model's conditions."""
        if self.media is None:
            raise RequestError(
                "prompt: this model was trained on pre-encoded data (no spec.data.encoders): it takes embeddings "
                "and latents at POST /v1/generate"
            )
        try:
            media = self.media.conditions(req, self.config.patch_size)
        except MediaRequestError as e:
            raise RequestError(str(e)) from None
        _, frames, height, width = media.latent_shape
        prepared = self._prepare(
            media.text, media.reference, media.context, (frames, height, width), req, req.seed, False, None
        )
        prepared.keep_tensor = True
        return prepared

    def _prepare(
        self, text, reference, context, size, req, seed: int, return_latent: bool, reference_frames: int | None
    ) -> Prepared:
        """`reference_frames`: /v1/generate takes one reference latent frame; /v1/videos one per image (None)."""
        cfg = self.config
        frames, height, width = size
        pt, ph, pw = cfg.patch_size

        def latent_tokens(x, name, frames=None):
            if x is None:
                return None
            if x.ndim != 4 or x.shape[0] != cfg.latent_channels or (frames is not None and x.shape[1] != frames):
                want = f"[{cfg.latent_channels}, {frames if frames else 'T'}, H, W]"
                raise RequestError(f"{name}: expected a latent {want}, got {list(x.shape)}")
            if x.shape[1] % pt or x.shape[2] % ph or x.shape[3] % pw:
                raise RequestError(
                    f"{name}: latent size {list(x.shape[1:])} must be divisible by the patch size "
                    f"{list(cfg.patch_size)}"
                )
            return patchify(x, cfg.patch_size)

        if frames % pt or height % ph or width % pw:
            raise RequestError(
                f"frames/height/width: {frames}x{height}x{width} must be divisible by "
                f"the patch size {list(cfg.patch_size)}"
            )
        shape = (cfg.latent_channels, frames, height, width)
        tokens = (frames // pt) * (height // ph) * (width // pw)
        if tokens > MAX_VIDEO_TOKENS:
            raise RequestError(
                f"frames/height/width: {frames}x{height}x{width} latents are {tokens} video tokens, more than "
                f"the limit of {MAX_VIDEO_TOKENS} per request; ask for a shorter or smaller video"
            )
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(tokens, cfg.patch_dim, generator=g)
        d = self.sampler_defaults
        sampler = SamplerConfig(
            steps=req.steps or d.get("steps", 10),
            method=req.method or d.get("method", "euler"),
            shift=req.shift or d.get("shift", 1.0),
            guidance=req.guidance,
        )

        def grid(x):
            return None if x is None else (x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw)

        conds = Conditions(
            text=text,
            reference=latent_tokens(reference, "reference", reference_frames),
            context=latent_tokens(context, "context"),
            reference_grid=grid(reference),
            context_grid=grid(context),
            video_grid=(frames // pt, height // ph, width // pw),
        )
        return Prepared(conds, noise, shape, sampler, seed, return_latent)

    def run_batch(self, batch: list[Prepared]) -> list[dict]:
        """One batch of requests with the same sampler settings: condition K/V encoded once, then every step
        runs only the video tokens of all requests, packed."""
        started = time.monotonic()
        self.metrics.batch_size.observe(len(batch))
        sampler = batch[0].sampler
        outs = self.denoiser.generate([p.conditions for p in batch], [p.noise for p in batch], sampler, mode="cached")
        self.metrics.model_evaluations.inc(function_evaluations(sampler.steps, sampler.method) + 1)  # +1: encode
        seconds = time.monotonic() - started
        results = []
        for p, tokens in zip(batch, outs):
            latent = unpatchify(tokens, p.conditions.video_grid, self.config.patch_size, p.shape[0])
            res = {
                "shape": list(latent.shape),
                "mean": float(latent.mean()),
                "std": float(latent.std()),
                "steps": p.sampler.steps,
                "method": p.sampler.method,
                "guidance": p.sampler.guidance,
                "seed": p.seed,
                "batch_size": len(batch),
                "batch_seconds": seconds,
            }
            if p.return_latent:
                res["latent"] = encode_array(latent)
            if p.keep_tensor:
                res["latent_tensor"] = latent
            results.append(res)
        return results


__all__ = ["InferenceEngine", "Prepared", "RequestError"]
