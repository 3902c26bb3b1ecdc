"""Durable file writes: temporary name, fsync, atomic rename, fsync of the folder; checksums while writing.

A reader never sees a half-written file under its final name: either the old state or the complete new file.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

CHUNK = 8 << 20


class ChecksumWriter:
    """A write-only file object that counts bytes and computes crc32 of everything written through it."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.crc32 = 0
        self.size = 0
        self.error: OSError | None = None  # torch.save turns a failing write into a vague RuntimeError

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.crc32 = zlib.crc32(view, self.crc32)
        self.size += view.nbytes
        # Unbuffered raw writes may be partial; loop so a full disk surfaces as OSError(ENOSPC) here rather than
        # as a short count the serializer misreports.
        done = 0
        try:
            while done < view.nbytes:
                done += self._f.write(view[done:])
        except OSError as e:
            self.error = self.error or e
            raise
        return view.nbytes

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
    writer = None
    try:
        with open(tmp, "wb", buffering=0) as f:
            writer = ChecksumWriter(f)
            produce(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if writer is not None and writer.error is not None and writer.error is not e:
            raise writer.error from e
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
