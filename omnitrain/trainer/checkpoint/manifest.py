"""The manifest: written last, it is what makes a step folder a complete checkpoint.

It lists every shard file with size and crc32, the world layout that wrote them, the model config fingerprint and
the job, so a restore can verify bytes, refuse another job's or another model's checkpoint, and plan resharding.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnitrain.checkpoint_format import FORMAT_DCP, FORMAT_TORCH_SAVE
from omnitrain.checkpoint_paths import MANIFEST_NAME
from omnitrain.fsio import write_bytes_atomic

# 1: one torch.save per rank (format "torch-save"); 2: DCP shard files and DCP's .metadata (omnitrain.checkpoint_format)
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """Base class of checkpoint failures."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that belongs to another job or model: restoring it would be wrong, not just unlucky."""


class InvalidManifestError(CheckpointError):
    """A manifest that cannot be parsed (torn or foreign file)."""


@dataclass(frozen=True)
class WorldLayout:
    """The parallel layout that wrote a checkpoint. Ranks are laid out as omnitrain.trainer.parallel.layout does
    (tp fastest, then ulysses, pp, dp)."""

    dp: int = 1
    pp: int = 1
    ulysses: int = 1
    tp: int = 1
    data_sharding: str = "replicate"  # "fsdp": model/optimizer shards differ between data-parallel ranks

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.ulysses * self.tp

    def describe(self) -> str:
        return (
            f"dp={self.dp} pp={self.pp} ulysses={self.ulysses} tp={self.tp} "
            f"({self.data_sharding}, {self.world_size} ranks)"
        )

    @classmethod
    def from_parallel_layout(cls, layout) -> WorldLayout:
        return cls(dp=layout.dp, pp=layout.pp, ulysses=layout.ulysses, tp=layout.tp, data_sharding=layout.data_sharding)


@dataclass(frozen=True)
class ShardFile:
    name: str  # relative to the step folder
    rank: int
    size: int
    crc32: int


@dataclass
class Manifest:
    job: str
    step: int
    layout: WorldLayout
    model_fingerprint: str
    files: list[ShardFile]
    created_unix: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION
    format: str = FORMAT_DCP
    metadata: ShardFile | None = None  # DCP's global index (.metadata), format "dcp" only

    @property
    def reshardable(self) -> bool:
        """Any layout can read it (DCP's index says where every slice lies); format 1 only into its own layout."""
        return self.format == FORMAT_DCP and self.metadata is not None

    def file_for_rank(self, rank: int) -> ShardFile:
        for f in self.files:
            if f.rank == rank:
                return f
        raise CheckpointError(f"manifest of step {self.step} lists no shard for rank {rank}")

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            return cls(
                job=data["job"],
                step=int(data["step"]),
                layout=WorldLayout(**data["layout"]),
                model_fingerprint=data["model_fingerprint"],
                files=[ShardFile(**f) for f in data["files"]],
                created_unix=float(data["created_unix"]),
                format_version=int(data["format_version"]),
                format=data.get("format", FORMAT_TORCH_SAVE),  # format 1 manifests have no such field
                metadata=ShardFile(**data["metadata"]) if data.get("metadata") else None,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidManifestError(f"unreadable manifest: {e}") from e

    def check_belongs_to(self, job: str, model_fingerprint: str, where: Path) -> None:
        """Raise CheckpointMismatchError naming both sides when this checkpoint is another job's or model's."""
        if self.job != job:
            raise CheckpointMismatchError(
                f"{where} was written by job {self.job!r}, not {job!r}: point checkpoint.localPath/persistentPath "
                f"at this job's folder or remove the foreign checkpoint"
            )
        if self.model_fingerprint != model_fingerprint:
            raise CheckpointMismatchError(
                f"{where} was written for model config {self.model_fingerprint}, this run has {model_fingerprint}: "
                f"the model dimensions changed (spec.model); start a new job or use training.initFrom"
            )


def model_fingerprint(model_config) -> str:
    """A short stable hash of the model's dimensions (a ModelConfig, a dict or None)."""
    if model_config is None:
        data = {}
    elif hasattr(model_config, "to_dict"):
        data = model_config.to_dict()
    elif isinstance(model_config, dict):
        data = model_config
    else:
        data = asdict(model_config)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(step_folder: Path, manifest: Manifest) -> None:
    write_bytes_atomic(step_folder / MANIFEST_NAME, manifest.to_json().encode())


def read_manifest(step_folder: Path) -> Manifest | None:
    """The manifest of a step folder; None when there is none (an incomplete checkpoint)."""
    path = step_folder / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return Manifest.from_json(text)
