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
from omnitrain.serving.api import GenerateRequest, decode_array, encode_array
from omnitrain.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot run; the message names the field."""


@dataclass
class Prepared:
    conditions: Conditions
    noise: torch.Tensor  # [video tokens, patch_dim]
    shape: tuple[int, int, int, int]
    sampler: SamplerConfig
    request: GenerateRequest

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

    def load(self) -> None:
        """Runs once (in a background thread of the server): readyz turns ready only when this has finished."""
        try:
            started = time.monotonic()
            art = self._load_model()
            replaced = quantize_linears(art.model, "rowwise", skip=self.skip_fp8) if self.fp8 else []
            self.denoiser = Denoiser(art.model, art.adapter)
            self.config, self.sampler_defaults = art.config, dict(art.sampler)
            self.cache = condition_cache_fidelity(art)
            self.metrics.condition_cache_exact.set(int(self.cache.exact))
            log.info("loaded %s in %.1fs (%d FP8 linears)", self.checkpoint, time.monotonic() - started, len(replaced))
            log.info("condition cache: %s (%s)", "exact" if self.cache.exact else "approximate", self.cache.reason)
            self.loaded.set()
            self.metrics.ready.set(1)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load %s: %s", self.checkpoint, self.load_error)

    def _load_model(self) -> ModelArtifact:
        """A model file; or, without distillation, a training checkpoint: a step folder or the job's checkpoint
        folder (its newest complete step), whose model dimensions come from the trainer config."""
        path = Path(self.checkpoint)
        if not path.is_dir():
            return load_artifact(path)
        if self.config_path is None:
            raise ValueError(f"{path} is a checkpoint folder: pass --config (the trainer config) for its model")
        import yaml

        from omnitrain.spec import TrainerConfig

        with open(self.config_path) as f:
            trainer_config = TrainerConfig.model_validate(yaml.safe_load(f))
        steps = {
            parse_step(p.name): p
            for p in path.iterdir()
            if parse_step(p.name) is not None and (p / MANIFEST_NAME).is_file()
        }
        return load_teacher(steps[max(steps)] if steps else path, trainer_config.spec.model.resolve())

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

        if req.frames % pt or req.height % ph or req.width % pw:
            raise RequestError(
                f"frames/height/width: {req.frames}x{req.height}x{req.width} must be divisible by "
                f"the patch size {list(cfg.patch_size)}"
            )
        shape = (cfg.latent_channels, req.frames, req.height, req.width)
        tokens = (req.frames // pt) * (req.height // ph) * (req.width // pw)
        g = torch.Generator().manual_seed(req.seed)
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
            reference=latent_tokens(reference, "reference", 1),
            context=latent_tokens(context, "context"),
            reference_grid=grid(reference),
            context_grid=grid(context),
            video_grid=(req.frames // pt, req.height // ph, req.width // pw),
        )
        return Prepared(conds, noise, shape, sampler, req)

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
                "seed": p.request.seed,
                "batch_size": len(batch),
                "batch_seconds": seconds,
            }
            if p.request.return_latent:
                res["latent"] = encode_array(latent)
            results.append(res)
        return results


__all__ = ["InferenceEngine", "Prepared", "RequestError"]
