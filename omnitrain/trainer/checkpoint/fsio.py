"""Durable file writes: temporary name, fsync, atomic rename, fsync of the folder; checksums while writing.

A reader never sees a half-written file under its final name: either the old state or the complete new file.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Callable, IO

CHUNK = 8 << 20


class ChecksumWriter:
    """A write-only file object that counts bytes and computes crc32 of everything written through it."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.crc32 = 0
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.crc32 = zlib.crc32(view, self.crc32)
        self.size += view.nbytes
        return self._f.write(view)

    def flush(self) -> None:
        self._f.flush()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def write_atomic(final: Path, produce: Callable[[ChecksumWriter], None]) -> tuple[int, int]:
    """Write `final` through `produce(writer)`; returns (size, crc32). On any error the temporary file is removed
    and the previous content under `final` (if any) is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        with open(tmp, "wb") as f:
            writer = ChecksumWriter(f)
            produce(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return writer.size, writer.crc32


def write_bytes_atomic(final: Path, data: bytes) -> tuple[int, int]:
    return write_atomic(final, lambda w: w.write(data))


def copy_atomic(src: Path, dst: Path) -> tuple[int, int]:
    """Copy with the same durability as write_atomic; returns (size, crc32) of the bytes written."""
    def produce(w: ChecksumWriter) -> None:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
    return write_atomic(dst, produce)


def file_crc32(path: Path) -> tuple[int, int]:
    """(size, crc32) of a file's bytes."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc
