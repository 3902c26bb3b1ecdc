"""Sequential reader over the shards of a folder, one row group in memory at a time, endless (epoch after epoch).

Its position (epoch, shard, row) is the next row to read; `read_at` re-reads one row by position (carried-over
samples after a resume). Corrupt input follows spec.data.onCorrupt: "skip" logs it and counts it, "fail" raises
DataError naming the shard (and row)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from omnitrain.trainer.data.schema import CorruptRow, DataSample, decode

log = logging.getLogger(__name__)

MANIFEST = "dataset.json"
Position = tuple[int, int, int]  # (epoch, shard index, row)


class DataError(RuntimeError):
    """Data the trainer cannot use (exit code CONFIG: a restart would not help)."""


@dataclass
class CorruptCounts:
    shards: int = 0
    rows: int = 0
    skipped: list[str] = field(default_factory=list)


def list_shards(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("shard-*.parquet"))


def read_manifest(folder: str | Path) -> dict:
    """The dataset's `dataset.json` (written last by every writer), or {} where there is none or it is unreadable."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _dataset_kind(folder: Path) -> str:
    """ "raw" for clips packed by `omnitrain data pack`, "encoded" otherwise (synthetic manifests carry no kind)."""
    return read_manifest(folder).get("kind", "encoded")


class ShardReader:
    def __init__(
        self,
        folder: str | Path,
        on_corrupt: str = "skip",
        row_decoder: Callable[[dict], DataSample] | None = None,
    ):
        if on_corrupt not in ("skip", "fail"):
            raise ValueError(f"spec.data.onCorrupt must be 'skip' or 'fail', not {on_corrupt!r}")
        self.folder = Path(folder)
        self.shards = list_shards(folder)
        if not self.shards:
            raise DataError(
                f"no shards (shard-*.parquet) in {self.folder}; check spec.data.path or set spec.data.synthetic"
            )
        raw = _dataset_kind(self.folder) == "raw"
        if raw and row_decoder is None:
            raise DataError(
                f"{self.folder} holds raw clips (omnitrain data pack), not encoded latents; set spec.data.encoders "
                "to encode them in the job, or encode them once with omnitrain data encode"
            )
        if not raw and row_decoder is not None:
            raise DataError(
                f"{self.folder} holds encoded samples, not raw clips; spec.data.encoders is for raw shards "
                "(omnitrain data pack): remove it"
            )
        self.decode_row = row_decoder or decode
        self.on_corrupt = on_corrupt
        self.corrupt = CorruptCounts()
        self._bad_shards: set[int] = set()
        self._row_groups: dict[int, list[tuple[int, int]]] = {}  # shard -> [(first row, rows)] per group
        self._cache: tuple[int, int, list[dict]] | None = None  # (shard, group, rows)
        self.epoch, self.shard, self.row = 0, 0, 0

    # -- position -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "shard": self.shard, "row": self.row}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.shard, self.row = int(state["epoch"]), int(state["shard"]), int(state["row"])

    # -- corrupt input ----------------------------------------------------------------------------------------
    def _corrupt(self, what: str, error: Exception) -> None:
        if self.on_corrupt == "fail":
            raise DataError(f"{what}: {error} (set spec.data.onCorrupt=skip to skip corrupt data)") from error
        if what not in self.corrupt.skipped:
            self.corrupt.skipped.append(what)
            log.warning("skipping corrupt %s: %s", what, error)

    def _groups(self, shard: int) -> list[tuple[int, int]] | None:
        if shard in self._bad_shards:
            return None
        if shard not in self._row_groups:
            try:
                meta = pq.ParquetFile(self.shards[shard]).metadata
                groups, first = [], 0
                for i in range(meta.num_row_groups):
                    groups.append((first, meta.row_group(i).num_rows))
                    first += meta.row_group(i).num_rows
            except Exception as error:  # pyarrow raises several types for a torn file
                self._bad_shards.add(shard)
                self.corrupt.shards += 1
                self._corrupt(f"shard {self.shards[shard]}", error)
                return None
            self._row_groups[shard] = groups
        return self._row_groups[shard]

    def _group_rows(self, shard: int, group: int) -> list[dict] | None:
        if self._cache and self._cache[:2] == (shard, group):
            return self._cache[2]
        try:
            rows = pq.ParquetFile(self.shards[shard]).read_row_group(group).to_pylist()
        except Exception as error:
            self.corrupt.rows += self._row_groups[shard][group][1]
            self._corrupt(f"shard {self.shards[shard]} row group {group}", error)
            return None
        self._cache = (shard, group, rows)
        return rows

    def _row(self, shard: int, row: int) -> DataSample | None | bool:
        """The decoded row; None when skipped as corrupt; False when past the shard's end (or the shard is bad)."""
        groups = self._groups(shard)
        if groups is None:
            return False
        for gi, (first, count) in enumerate(groups):
            if first <= row < first + count:
                rows = self._group_rows(shard, gi)
                if rows is None:
                    return None
                try:
                    return self.decode_row(rows[row - first])
                except (CorruptRow, KeyError, TypeError, ValueError) as error:
                    self.corrupt.rows += 1
                    self._corrupt(f"shard {self.shards[shard]} row {row}", error)
                    return None
        return False

    # -- reading ----------------------------------------------------------------------------------------------
    def read_at(self, position: Position) -> DataSample | None:
        found = self._row(position[1], position[2])
        return found if isinstance(found, DataSample) else None

    def __iter__(self) -> Iterator[tuple[Position, DataSample]]:
        return self

    def __next__(self) -> tuple[Position, DataSample]:
        empty_passes = 0
        while True:
            position = (self.epoch, self.shard, self.row)
            found = self._row(self.shard, self.row)
            if found is False:  # end of shard (or unreadable): next shard, next epoch after the last
                self.shard, self.row = self.shard + 1, 0
                if self.shard == len(self.shards):
                    self.epoch, self.shard = self.epoch + 1, 0
                    empty_passes += 1
                    if empty_passes > 1:
                        raise DataError(f"no readable rows in any shard of {self.folder}")
                continue
            self.row += 1
            if found is not None:
                return position, found
