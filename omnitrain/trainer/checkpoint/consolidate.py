"""`omnitrain checkpoint consolidate`: one step folder to a single torch.save file, for promotion and for users who
leave: DCP's own loader reads the shards (what format_utils.dcp_to_torch_save does), after the manifest and every
file's crc32 were checked, so a torn or corrupt checkpoint is refused rather than half-read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from omnitrain import fsio
from omnitrain.checkpoint_format import load_consolidated
from omnitrain.trainer.checkpoint.manifest import CheckpointError, InvalidManifestError, read_manifest


@dataclass(frozen=True)
class Consolidated:
    out: Path
    step: int
    tensors: int
    bytes_written: int


def _count_tensors(node) -> int:
    if isinstance(node, torch.Tensor):
        return 1
    if isinstance(node, dict):
        return sum(_count_tensors(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return sum(_count_tensors(v) for v in node)
    return 0


def consolidate(step_folder: str | Path, out: str | Path, model_only: bool = False) -> Consolidated:
    """Write the whole state of a complete format-2 step folder (or only its model, state['train']['model'], as a
    plain state dict) to `out`, which must not exist."""
    folder, out = Path(step_folder), Path(out)
    try:
        manifest = read_manifest(folder)
    except InvalidManifestError as e:
        raise CheckpointError(f"{folder}: {e}") from e
    if manifest is None:
        raise CheckpointError(f"{folder} has no manifest: not a complete checkpoint step folder (a torn write?)")
    if not manifest.reshardable:
        raise CheckpointError(
            f"{folder} is a format-{manifest.format_version} checkpoint ({manifest.format}): its rank files are "
            f"torch.save files already (rank 0's holds the whole model in replicated layouts)"
        )
    for entry in [*manifest.files, *([manifest.metadata] if manifest.metadata else [])]:
        path = folder / entry.name
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: consolidate the persistent tier's folder, which holds every rank"
            )
        if fsio.file_crc32(path) != (entry.size, entry.crc32):
            raise CheckpointError(f"{path} does not match the manifest (size/crc32): corrupt or truncated")
    if out.exists():
        raise CheckpointError(f"{out} exists; choose another --out (consolidate never overwrites)")
    state = load_consolidated(folder, keys={"train.model"} if model_only else None)
    if model_only:
        state = state["train"]["model"]
    size, _ = fsio.write_atomic(out, lambda w: torch.save(state, w))
    return Consolidated(out=out, step=manifest.step, tensors=_count_tensors(state), bytes_written=size)
