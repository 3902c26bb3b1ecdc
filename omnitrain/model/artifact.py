"""A self-describing model file for promotion (teacher snapshots, distilled students): the model factory, its
config, the weights and the sampling defaults it was made for. Written atomically; never silently overwritten.

Also the teacher of a distillation or a server without one: a model file, or a training checkpoint's step folder
(`load_teacher`). Below the trainer and the server, which both read these files.
"""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from omnitrain.checkpoint_format import read_model_state
from omnitrain.fsio import write_bytes_atomic
from omnitrain.model.config import ModelConfig

FORMAT = "omnitrain-model/1"
# Training checkpoints hold MMDiT state dicts; promotion loads them through the caching-ready adapter.
MMDIT_FACTORY = "omnitrain.model.mmdit_adapter:build_mmdit"
# Factory names that model files written before a module moved still carry.
RENAMED_FACTORIES = {"omnitrain.serving.mmdit_adapter:build_mmdit": MMDIT_FACTORY}


class ModelFileError(ValueError):
    """A path that holds no model promotion can load; the message says what was found."""


@dataclass
class ModelArtifact:
    model: nn.Module
    adapter: object
    config: ModelConfig
    factory: str  # "package.module:function" building (model, adapter)
    sampler: dict = field(default_factory=dict)  # SamplerConfig fields this model is meant to run with
    meta: dict = field(default_factory=dict)  # provenance: teacher path, distillation figures, ...


@dataclass(frozen=True)
class CacheFidelity:
    """Whether serving with cached condition keys/values (the condition-causal, clean-condition view) computes the
    model as it was trained, and why."""

    exact: bool
    reason: str


def condition_cache_fidelity(artifact: ModelArtifact) -> CacheFidelity:
    if artifact.config.condition_attention == "causal":
        return CacheFidelity(True, "trained with spec.model.conditionAttention: causal (the cached view)")
    if "teacher" in artifact.meta:
        return CacheFidelity(True, "a distilled student (distillation trains it in the cached view)")
    return CacheFidelity(
        False,
        "trained with full attention: the cached view (conditions see only conditions, clean t = 0) differs from "
        "the trained model; distill it, or train with spec.model.conditionAttention: causal",
    )


def build_model(factory: str, config: ModelConfig):
    factory = RENAMED_FACTORIES.get(factory, factory)
    module_name, _, attr = factory.partition(":")
    if not attr:
        raise ValueError(f"model factory {factory!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attr)(config)


def save_artifact(path: str | Path, artifact: ModelArtifact, overwrite: bool = False) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists; refusing to overwrite a promoted model (remove it or pass overwrite=True)"
        )
    buf = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "factory": artifact.factory,
            "config": artifact.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in artifact.model.state_dict().items()},
            "sampler": artifact.sampler,
            "meta": artifact.meta,
        },
        buf,
    )
    write_bytes_atomic(path, buf.getvalue())


def load_artifact(path: str | Path) -> ModelArtifact:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no model file at {path}: pass the student written by `omnitrain distill` "
            "(<persistentPath>/<job>/promotion/student.pt) or a teacher snapshot"
        )
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not an {FORMAT} file (found format {found!r})")
    cfg = dict(data["config"])
    cfg["patch_size"] = tuple(cfg["patch_size"])
    config = ModelConfig(**cfg)
    factory = RENAMED_FACTORIES.get(data["factory"], data["factory"])
    model, adapter = build_model(factory, config)
    model.load_state_dict(data["state_dict"])
    return ModelArtifact(
        model=model.eval(),
        adapter=adapter,
        config=config,
        factory=factory,
        sampler=data.get("sampler", {}),
        meta=data.get("meta", {}),
    )


def load_teacher(path: str | Path, config: ModelConfig) -> ModelArtifact:
    """A promotion model file, or a training checkpoint step folder of an MMDiT of `config` (its whole model,
    state['train']['model'], read through DCP's index whatever layout saved it)."""
    path = Path(path)
    if path.is_file():
        return load_artifact(path)
    if not path.is_dir():
        raise ModelFileError(f"{path} is neither a model file nor a checkpoint step folder")
    model_state = read_model_state(path)
    if model_state is None:
        raise ModelFileError(
            f"{path} holds no whole model (state['train']['model']): not a checkpoint step folder, or a format-1 "
            f"checkpoint of a sharded layout; export a full model first"
        )
    # A wrapped model (DDP) saves under "module."; the model's own names are what MMDiT loads.
    model_state = {k.removeprefix("module."): v for k, v in model_state.items()}
    model, adapter = build_model(MMDIT_FACTORY, config)
    model.load_state_dict(model_state)
    return ModelArtifact(
        model=model.eval(), adapter=adapter, config=config, factory=MMDIT_FACTORY, meta={"checkpoint": str(path)}
    )


__all__ = [
    "CacheFidelity",
    "FORMAT",
    "MMDIT_FACTORY",
    "ModelArtifact",
    "ModelFileError",
    "RENAMED_FACTORIES",
    "build_model",
    "condition_cache_fidelity",
    "load_artifact",
    "load_teacher",
    "save_artifact",
]
