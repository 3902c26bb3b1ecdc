"""A dataset folder written from scratch (`omnitrain data pack`, `omnitrain data encode`): a folder that already
holds a dataset is refused, each shard appears under its name complete or not at all, the manifest is written
last, and a failure before it removes the shards written so far (the folder held none when we began, so they are
ours): readers see a whole dataset or none."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from omnitrain.fsio import write_bytes_atomic
from omnitrain.trainer.data.reader import MANIFEST, list_shards


class NewDataset:
    """with NewDataset(out) as dataset: dataset.write_shard(...) ...; dataset.finish(manifest)"""

    def __init__(self, out: Path):
        if (out / MANIFEST).exists() or list_shards(out):  # writers never overwrite a dataset
            raise ValueError(f"{out} already holds a dataset ({MANIFEST} or shard-*.parquet); write into a new folder")
        self.out = out
        self.shards: list[Path] = []

    def __enter__(self) -> NewDataset:
        self.out.mkdir(parents=True, exist_ok=True)
        return self

    def write_shard(self, name: str, rows: list[dict], schema: pa.Schema, row_group_size: int) -> Path:
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, row_group_size=row_group_size)
        path = self.out / name
        write_bytes_atomic(path, buffer.getvalue().to_pybytes())
        self.shards.append(path)
        return path

    def finish(self, manifest: dict) -> None:
        write_bytes_atomic(self.out / MANIFEST, json.dumps(manifest, indent=1).encode())

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not (self.out / MANIFEST).exists():
            for path in self.shards:
                path.unlink(missing_ok=True)
