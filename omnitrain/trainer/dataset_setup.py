"""Make sure the dataset exists: with spec.data.synthetic, one process writes it (local rank 0 of node 0), under a
file lock; every other process waits for its manifest."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

from omnitrain.model.config import ModelConfig
from omnitrain.spec import DataSpec
from omnitrain.trainer.data.reader import MANIFEST, DataError, list_shards
from omnitrain.trainer.data.synthetic import SynthSpec, write_synthetic

WAIT_SECONDS = 600.0


def synth_spec(data: DataSpec, model: ModelConfig) -> SynthSpec:
    s = data.synthetic
    return SynthSpec(
        samples=s.samples,
        shards=s.shards,
        seed=s.seed,
        max_frames=s.max_frames,
        max_side=s.max_side,
        latent_channels=model.latent_channels,
        text_dim=model.text_dim,
        patch_size=model.patch_size,
    )


def write_clips(folder: Path, synthetic, log) -> None:
    """Real MP4s of coloured shapes under folder/clips, packed into raw shards in folder (the clips stay inside)."""
    from omnitrain.trainer.data.pack import PackSpec, pack_folder
    from omnitrain.trainer.data.shapes import ShapesSpec, write_shapes

    write_shapes(folder / "clips", ShapesSpec(clips=synthetic.samples, seed=synthetic.seed), log=log)
    pack_folder(folder / "clips", folder, PackSpec(shards=synthetic.shards, seed=synthetic.seed), log=log)


def ensure_dataset(
    data: DataSpec, model: ModelConfig, is_writer: bool, log=print, wait_seconds: float = WAIT_SECONDS
) -> None:
    folder = Path(data.path)
    if data.synthetic is None:
        if not list_shards(folder):
            raise DataError(f"no shards (shard-*.parquet) in {folder}; check spec.data.path or set spec.data.synthetic")
        return
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    if is_writer:
        with open(folder / ".synthetic.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two writers on a shared volume: the second finds it done
            if not manifest.exists():
                log(f"writing synthetic dataset to {folder} ({data.synthetic.samples} {data.synthetic.kind})")
                if data.synthetic.kind == "clips":
                    write_clips(folder, data.synthetic, log)
                else:
                    write_synthetic(folder, synth_spec(data, model), log=log)
        return
    deadline = time.monotonic() + wait_seconds
    while not manifest.exists():
        if time.monotonic() > deadline:
            raise DataError(f"waited {wait_seconds:.0f}s for the synthetic dataset in {folder}; is node 0 running?")
        time.sleep(0.2)  # polling a file another process writes (not synchronising threads of this one)
