"""A self-describing model file for promotion (teacher snapshots, distilled students): the model factory, its
config, the weights and the sampling defaults it was made for. Written atomically; never silently overwritten."""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from omnitrain.model.config import ModelConfig
from omnitrain.trainer.checkpoint.fsio import write_bytes_atomic

FORMAT = "omnitrain-model/1"
# Until MMDiT has a denoiser adapter, promotion runs on the contract-shaped tiny conditional DiT.
DEFAULT_FACTORY = "omnitrain.serving.testing:build_tiny"
# Training checkpoints hold MMDiT state dicts; promotion loads them through the caching-ready adapter.
MMDIT_FACTORY = "omnitrain.serving.mmdit_adapter:build_mmdit"


@dataclass
class ModelArtifact:
    model: nn.Module
    adapter: object
    config: ModelConfig
    factory: str = DEFAULT_FACTORY
    sampler: dict = field(default_factory=dict)     # SamplerConfig fields this model is meant to run with
    meta: dict = field(default_factory=dict)        # provenance: teacher path, distillation figures, ...


def build_model(factory: str, config: ModelConfig):
    module_name, _, attr = factory.partition(":")
    if not attr:
        raise ValueError(f"model factory {factory!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attr)(config)


def save_artifact(path: str | Path, artifact: ModelArtifact, overwrite: bool = False) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite a promoted model (remove it or pass "
                              "overwrite=True)")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "factory": artifact.factory, "config": artifact.config.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in artifact.model.state_dict().items()},
                "sampler": artifact.sampler, "meta": artifact.meta}, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_artifact(path: str | Path) -> ModelArtifact:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: pass the student written by `omnitrain distill` "
                                "(<persistentPath>/<job>/promotion/student.pt) or a teacher snapshot")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not an {FORMAT} file (found format {found!r})")
    cfg = dict(data["config"])
    cfg["patch_size"] = tuple(cfg["patch_size"])
    config = ModelConfig(**cfg)
    model, adapter = build_model(data["factory"], config)
    model.load_state_dict(data["state_dict"])
    return ModelArtifact(model=model.eval(), adapter=adapter, config=config, factory=data["factory"],
                         sampler=data.get("sampler", {}), meta=data.get("meta", {}))


__all__ = ["DEFAULT_FACTORY", "FORMAT", "MMDIT_FACTORY", "ModelArtifact", "build_model", "load_artifact",
           "save_artifact"]
