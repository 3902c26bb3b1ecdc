"""The frozen encoders in front of the DiT: a video VAE (pixels -> latents, and back for serving) and a text encoder
(caption or prompt -> per-token embeddings), as `spec.data.encoders` names them. Shared by the training job (online
encoding and `omnitrain data encode`, omnitrain/trainer/data/encoders.py) and the inference server (prompts in, MP4
out), so both see conditions encoded alike. Weights are frozen: eval mode, no grad, never in an optimizer."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnitrain.media.buckets import Bucket, bucket_grid
from omnitrain.spec import EncodersSpec, TextEncoderSpec, VaeSpec


class EncoderError(ValueError):
    """Encoders that cannot be loaded or do not fit the model; the message names the spec field."""


def _import(dotted: str, field: str):
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise EncoderError(f"{field}: cannot import {dotted!r} ({error})") from error


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def load_vae(spec: VaeSpec) -> torch.nn.Module:
    cls = _import(spec.class_name, "encoders.vae.className")
    if spec.weights is None:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG streams stay as they were
            torch.manual_seed(spec.seed)
            return _frozen(cls(**spec.config))
    weights = Path(spec.weights)
    if weights.is_dir():
        return _frozen(cls.from_pretrained(str(weights)))
    if weights.suffix == ".safetensors" and weights.is_file():
        from safetensors.torch import load_file

        vae = cls(**spec.config)
        vae.load_state_dict(load_file(str(weights)), strict=True)
        return _frozen(vae)
    raise EncoderError(
        f"encoders.vae.weights: {spec.weights} is neither a diffusers model folder nor a .safetensors file"
    )


def _model_folder(path: str) -> str:
    if Path(path).is_dir():
        return path
    try:
        package = importlib.import_module(path)
    except ImportError as error:
        raise EncoderError(
            f"encoders.text.path: {path!r} is neither a model folder nor an installed package ({error})"
        ) from error
    folder = getattr(package, "MODEL_DIR", None) or Path(package.__file__ or ".").parent / "model"
    if not Path(folder).is_dir():
        raise EncoderError(f"encoders.text.path: the package {path!r} ships no model folder ({folder})")
    return str(folder)


class TextEncoder:
    """Caption -> float32 [tokens, width], the per-token embeddings (not a pooled vector: the DiT attends to them)."""

    # the libraries' own types vary by kind and release; what is used of them is exercised by the tests
    model: Any

    def __init__(self, spec: TextEncoderSpec, device: str = "cpu"):
        folder = _model_folder(spec.path)
        self.kind = spec.kind
        if spec.kind == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(folder, device=device)
            self.model.max_seq_length = spec.max_tokens
            _frozen(self.model)
            dimension = (
                getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            )
            self.width = int(dimension())
        else:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = _frozen(AutoModel.from_pretrained(folder).to(device))
            self.max_tokens = spec.max_tokens
            self.width = int(self.model.config.hidden_size)
        self.device = device

    def count_tokens(self, caption: str) -> int:
        """How many embeddings __call__ returns for the caption, from the tokenizer alone (planning a step's
        tokens on every rank costs no encoder run)."""
        if self.kind == "sentence-transformers":
            tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize  # renamed in 6.x
            return int(tokenize([caption])["input_ids"].shape[1])
        return len(self.tokenizer(caption, truncation=True, max_length=self.max_tokens)["input_ids"])

    @torch.no_grad()
    def __call__(self, caption: str) -> torch.Tensor:
        if self.kind == "sentence-transformers":
            tokens = self.model.encode([caption], output_value="token_embeddings", convert_to_numpy=False)[0]
        else:
            batch = self.tokenizer(caption, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            tokens = self.model(**batch.to(self.device)).last_hidden_state[0]
        return tokens.detach().float().cpu().contiguous()


@dataclass
class VideoEncoder:
    """Pixels [3, T, H, W] in [-1, 1] -> latents [C, 1 + (T - 1) / temporal, H / spatial, W / spatial]."""

    vae: Any  # a diffusers model: its .config is a FrozenDict of the constructor's arguments
    spec: VaeSpec
    device: str = "cpu"

    @property
    def channels(self) -> int:
        return int(self.vae.config.z_dim) if hasattr(self.vae.config, "z_dim") else int(self.vae.config.latent_channels)

    @property
    def spatial_stride(self) -> int:
        config = self.vae.config
        if hasattr(config, "dim_mult"):  # Wan's VAE halves the sides once per level after the first
            return 2 ** (len(config.dim_mult) - 1)
        return int(getattr(config, "scale_factor_spatial", 8))

    @property
    def temporal_stride(self) -> int:
        config = self.vae.config
        if hasattr(config, "temperal_downsample"):  # sic: diffusers' spelling
            return 2 ** sum(bool(x) for x in config.temperal_downsample)
        return int(getattr(config, "scale_factor_temporal", 1))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The latent of a (frames, height, width) input, without running the VAE (a causal VAE keeps the first
        frame and compresses the rest)."""
        t, s = self.temporal_stride, self.spatial_stride
        return (self.channels, 1 + (frames - 1) // t, height // s, width // s)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dist = self.vae.encode(pixels[None].to(self.device)).latent_dist
        mean, std = dist.mean[0].float().cpu(), dist.std[0].float().cpu()
        latent = mean + std * torch.randn(mean.shape, generator=generator) if generator is not None else mean
        shift, scale = self._normalisation(latent.shape[0])
        return ((latent - shift) / scale).contiguous()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """A latent as __call__ gives it (normalised) -> pixels [3, T, H, W] in about [-1, 1]."""
        shift, scale = self._normalisation(latent.shape[0])
        return self.vae.decode((latent * scale + shift)[None].to(self.device)).sample[0].float().cpu()

    def _normalisation(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """spec.latentsMean / latentsStd per channel (0 and 1 where unset), shaped to broadcast over [C, T, H, W]."""
        mean, std = self.spec.latents_mean or [0.0] * channels, self.spec.latents_std or [1.0] * channels
        return (
            torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(channels, 1, 1, 1),
        )


@dataclass
class Encoders:
    spec: EncodersSpec
    video: VideoEncoder
    text: TextEncoder
    buckets: list[Bucket]

    @classmethod
    def load(cls, spec: EncodersSpec, device: str = "cpu") -> Encoders:
        with torch.random.fork_rng(devices=[]):  # a library that initialises before loading must not move our RNG
            vae = load_vae(spec.vae).to(device)
            text = TextEncoder(spec.text, device)
        b = spec.buckets
        grid = bucket_grid(b.area, tuple(b.aspects), b.max_frames, b.multiple)
        encoders = cls(spec, VideoEncoder(vae, spec.vae, device), text, grid)
        for name, values in (("latentsMean", spec.vae.latents_mean), ("latentsStd", spec.vae.latents_std)):
            if values is not None and len(values) != encoders.video.channels:
                raise EncoderError(
                    f"encoders.vae.{name} has {len(values)} values; the VAE has {encoders.video.channels} channels"
                )
        if b.multiple % encoders.video.spatial_stride:
            raise EncoderError(
                f"encoders.buckets.multiple={b.multiple} is not a multiple of the VAE's spatial stride "
                f"{encoders.video.spatial_stride}"
            )
        return encoders

    def check_model(self, latent_channels: int, text_dim: int, patch_size: tuple[int, int, int]) -> None:
        """The DiT must take what the encoders give; both sides named."""
        if latent_channels != self.video.channels:
            raise EncoderError(
                f"spec.model.latentChannels={latent_channels} but the VAE ({self.spec.vae.class_name}) gives "
                f"{self.video.channels} channels; set model.latentChannels: {self.video.channels}"
            )
        if text_dim != self.text.width:
            raise EncoderError(
                f"spec.model.textDim={text_dim} but the text encoder ({self.spec.text.path}) gives {self.text.width}"
                f"-wide embeddings; set model.textDim: {self.text.width}"
            )
        step = self.video.spatial_stride
        for bucket in self.buckets:
            if (bucket.height // step) % patch_size[1] or (bucket.width // step) % patch_size[2]:
                raise EncoderError(
                    f"bucket {bucket} gives latents of {bucket.height // step}x{bucket.width // step}, not divisible "
                    f"by the patch size {list(patch_size)}; raise encoders.buckets.multiple"
                )

    def fingerprint(self) -> dict:
        """What the encoded dataset depends on, kept in its manifest (encoded data from other encoders is another
        dataset)."""
        return self.spec.to_wire()


@contextlib.contextmanager
def intra_op_threads(count: int, device: str = "cpu") -> Iterator[None]:
    """CPU results depend on how many threads split a reduction: encoding runs at a fixed count."""
    if not device.startswith("cpu"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
