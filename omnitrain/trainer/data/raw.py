"""Row layout of a raw shard: one clip with its caption, as it was filmed, before any encoder ran.

Beside the encoded layout (schema.py): the clip as MP4 bytes or as a path under the data volume, its caption,
optional reference images (PNG/JPEG bytes; an i2v row) and an optional context clip (a v2v row). The clip's size
(frames, height, width, fps) is probed when the shard is packed, so buckets are chosen without decoding; `source`
is the file the row came from, named in every error about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from omnitrain.media.video import VideoInfo
from omnitrain.trainer.data.schema import TASKS, CorruptRow

RAW_SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("task", pa.string()),
        ("caption", pa.string()),
        ("source", pa.string()),
        ("video", pa.binary()),  # MP4 bytes, or null when video_path is set
        ("video_path", pa.string()),  # relative to the data volume's root
        ("frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("fps", pa.float64()),
        ("references", pa.list_(pa.binary())),
        ("context", pa.binary()),
        ("context_frames", pa.int32()),  # probed like the clip's: online encoding plans its tokens from it
    ]
)


@dataclass
class RawSample:
    key: int
    task: str
    caption: str
    source: str
    info: VideoInfo
    video: bytes | None = None
    video_path: str | None = None
    references: list[bytes] = field(default_factory=list)
    context: bytes | None = None
    context_frames: int | None = None

    def video_bytes(self, root: str | Path) -> bytes:
        """The clip's bytes, read from `root` when the row holds a path; a path that leaves the root is refused."""
        if self.video is not None:
            return self.video
        assert self.video_path is not None
        base = Path(root).resolve()
        path = (base / self.video_path).resolve()
        if not path.is_relative_to(base):
            raise CorruptRow(f"{self.source}: video_path {self.video_path!r} leaves the data folder {base}")
        try:
            return path.read_bytes()
        except OSError as error:
            raise CorruptRow(f"{self.source}: video_path {self.video_path!r}: {error.strerror}") from error


def encode_raw(sample: RawSample) -> dict:
    return {
        "key": sample.key,
        "task": sample.task,
        "caption": sample.caption,
        "source": sample.source,
        "video": sample.video,
        "video_path": sample.video_path,
        "frames": sample.info.frames,
        "height": sample.info.height,
        "width": sample.info.width,
        "fps": sample.info.fps,
        "references": list(sample.references) or None,
        "context": sample.context,
        "context_frames": sample.context_frames,
    }


def decode_raw(row: dict) -> RawSample:
    source = row.get("source") or f"row {row.get('key')}"
    if row.get("task") not in TASKS:
        raise CorruptRow(f"{source}: task {row.get('task')!r} is not one of {TASKS}")
    if (row.get("video") is None) == (row.get("video_path") is None):
        raise CorruptRow(f"{source}: exactly one of 'video' (bytes) and 'video_path' must be set")
    if not (row.get("caption") or "").strip():
        raise CorruptRow(f"{source}: the caption is empty")
    size = {name: row.get(name) for name in ("frames", "height", "width")}
    if any(value is None or value <= 0 for value in size.values()):
        raise CorruptRow(f"{source}: frames/height/width must be positive, not {size}")
    sample = RawSample(
        key=int(row["key"]),
        task=row["task"],
        caption=row["caption"],
        source=source,
        info=VideoInfo(frames=size["frames"], height=size["height"], width=size["width"], fps=float(row["fps"] or 0)),
        video=row.get("video"),
        video_path=row.get("video_path"),
        references=list(row.get("references") or []),
        context=row.get("context"),
        context_frames=row.get("context_frames"),
    )
    if sample.task == "i2v" and not sample.references:
        raise CorruptRow(f"{source}: an i2v row needs at least one reference image")
    if sample.task == "v2v" and sample.context is None:
        raise CorruptRow(f"{source}: a v2v row needs a context clip")
    if sample.context is not None and not (sample.context_frames or 0) > 0:
        raise CorruptRow(f"{source}: a context clip needs its frame count (context_frames)")
    return sample
