"""`omnitrain data encode RAW --out ENCODED`: the pre-encoding Job. A raw dataset (pack.py) through the frozen
encoders (encoders.py) into today's encoded shards, for a dataset that several runs train on.

Shard i of the output holds shard i of the input, row for row in the same order, so the pack-time shuffle carries
over. Samples that cannot be encoded are skipped with the file named (onCorrupt=skip) or end the job (fail). Each
shard appears complete or not at all; the manifest, written last, records the encoders, so an encoded dataset says
which VAE and text encoder made it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from omnitrain.encoders import Encoders
from omnitrain.trainer.data.dataset_writer import NewDataset
from omnitrain.trainer.data.encoders import SkipSample, encode_raw_sample
from omnitrain.trainer.data.pack import clip_root
from omnitrain.trainer.data.raw import CorruptRow, decode_raw
from omnitrain.trainer.data.reader import MANIFEST, DataError, list_shards, read_manifest
from omnitrain.trainer.data.schema import SCHEMA, encode


@dataclass
class EncodeReport:
    samples: int = 0
    shards: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def made_by(out: str | Path, raw_folder: str | Path, spec) -> bool:
    """Whether `out` holds a complete encoded dataset of `raw_folder` made by encoders of this spec."""
    manifest = read_manifest(out)
    return (
        manifest.get("kind") == "encoded"
        and manifest.get("source") == str(Path(raw_folder).resolve())
        and manifest.get("encoders") == spec.to_wire()
    )


def encode_dataset(
    raw_folder: str | Path,
    out: str | Path,
    encoders: Encoders,
    on_corrupt: str = "skip",
    log: Callable[[str], None] = print,
) -> EncodeReport:
    raw_folder, out = Path(raw_folder), Path(out)
    if read_manifest(raw_folder).get("kind") != "raw":
        raise DataError(
            f"{raw_folder} is not a raw dataset (omnitrain data pack writes one: its {MANIFEST} has kind raw)"
        )
    root = clip_root(raw_folder)
    shards = list_shards(raw_folder)
    report = EncodeReport()
    with NewDataset(out) as dataset:
        for index, shard in enumerate(shards):
            rows = []
            for row in pq.read_table(shard).to_pylist():
                try:
                    rows.append(encode(encode_raw_sample(decode_raw(row), encoders, root)))
                except (SkipSample, CorruptRow) as error:
                    if on_corrupt == "fail":
                        raise DataError(f"{error} (set spec.data.onCorrupt=skip to skip it)") from error
                    report.skipped.append((row.get("source") or f"key {row.get('key')}", str(error)))
                    log(f"data encode: skipped {error}")
            path = dataset.write_shard(shard.name, rows, SCHEMA, row_group_size=16)
            report.shards.append(path)
            report.samples += len(rows)
            log(f"data encode: shard {index + 1}/{len(shards)} ({len(rows)} samples) -> {path}")
        dataset.finish(
            {
                "kind": "encoded",
                "samples": report.samples,
                "shards": len(report.shards),
                "source": str(raw_folder.resolve()),
                "encoders": encoders.fingerprint(),
                "skipped": [{"file": file, "reason": reason} for file, reason in report.skipped],
            }
        )
    return report
