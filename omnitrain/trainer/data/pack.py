"""`omnitrain data pack FOLDER`: a folder of clips and captions -> pre-shuffled raw Parquet shards (raw.py).

The folder, searched recursively:

    <name>.mp4            the clip (also .mov .mkv .webm .avi .m4v)
    <name>.txt            its caption (required)
    <name>.ref.png        reference images, any number: .ref.png, .ref0.jpg, .ref-1.webp ... (an i2v sample)
    <name>.context.mp4    a context clip (a v2v sample)

Every clip is decoded whole once, so a file that is unreadable, torn, empty or too large is skipped here with its
reason, not found by a training job weeks later; the count and the reasons are printed and kept in the manifest.
Two passes keep memory flat: the first probes (decodes and counts), the second reads each shard's bytes and writes
it. Each shard appears complete or not at all, the manifest `dataset.json` is written last, and a folder that
already holds a dataset is refused rather than overwritten."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from omnitrain.media.image import decode_image
from omnitrain.media.video import DEFAULT_LIMITS, MediaError, MediaLimits, VideoInfo, probe_video
from omnitrain.trainer.data.dataset_writer import NewDataset
from omnitrain.trainer.data.raw import RAW_SCHEMA, RawSample, decode_raw, encode_raw
from omnitrain.trainer.data.reader import list_shards, read_manifest

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class PackError(ValueError):
    """Nothing can be packed as asked (no usable clip, an output folder that already holds a dataset)."""


@dataclass(frozen=True)
class ClipFiles:
    """The files of one sample as found in the folder (names relative to it)."""

    name: str
    video: str
    caption: str | None
    references: tuple[str, ...] = ()
    context: str | None = None


@dataclass(frozen=True)
class PackSpec:
    shards: int = 4
    seed: int = 0
    store: str = "bytes"  # "bytes": the clip inside the shard; "paths": its path, the file stays where it is
    row_group_size: int = 16
    limits: MediaLimits = DEFAULT_LIMITS


@dataclass
class PackReport:
    samples: int = 0
    shards: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _stem_and_role(name: str) -> tuple[str, str]:
    """'a/clip.ref0.png' -> ('a/clip', 'ref'); 'a/clip.context.mp4' -> ('a/clip', 'context'); 'a/clip.mp4' ->
    ('a/clip', 'video'); 'a/clip.txt' -> ('a/clip', 'caption'); anything else -> (name, '')."""
    base, suffix = os.path.splitext(name)
    suffix = suffix.lower()
    stem, _, role = base.rpartition(".")
    if suffix in VIDEO_SUFFIXES:
        return (stem, "context") if stem and role == "context" else (base, "video")
    if suffix in IMAGE_SUFFIXES and stem and role.rstrip("0123456789-_") == "ref":
        return stem, "ref"
    if suffix == ".txt":
        return base, "caption"
    return name, ""


def group_files(names: list[str]) -> list[ClipFiles]:
    """Group a folder's file names (relative, '/'-separated) into samples; pure, sorted by clip name."""
    parts: dict[str, dict] = {}
    for name in sorted(names):
        stem, role = _stem_and_role(name)
        if not role:
            continue
        entry = parts.setdefault(stem, {"video": None, "caption": None, "references": [], "context": None})
        if role == "ref":
            entry["references"].append(name)
        else:
            entry[role] = name
    return [
        ClipFiles(stem, e["video"], e["caption"], tuple(e["references"]), e["context"])
        for stem, e in sorted(parts.items())
        if e["video"] is not None
    ]


def scan_folder(folder: Path) -> list[ClipFiles]:
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return group_files(names)


@dataclass(frozen=True)
class Probed:
    key: int
    clip: ClipFiles
    info: VideoInfo
    caption: str
    context_frames: int | None


def _probe(folder: Path, clip: ClipFiles, key: int, limits: MediaLimits) -> Probed:
    """The clip's size and caption (and its context clip's length); raises MediaError naming the file at fault."""
    if clip.caption is None:
        raise MediaError(f"no caption file {clip.name}.txt")
    caption = (folder / clip.caption).read_text(errors="replace").strip()
    if not caption:
        raise MediaError(f"the caption file {clip.caption} is empty")
    info = probe_video(folder / clip.video, limits)  # the report names this file already
    for reference in clip.references:
        try:
            decode_image((folder / reference).read_bytes(), limits)
        except MediaError as error:
            raise MediaError(f"{reference}: {error}") from error
    context_frames = None
    if clip.context is not None:
        try:
            context_frames = probe_video(folder / clip.context, limits).frames
        except MediaError as error:
            raise MediaError(f"{clip.context}: {error}") from error
    return Probed(key, clip, info, caption, context_frames)


def _sample(folder: Path, probed: Probed, spec: PackSpec) -> RawSample:
    clip = probed.clip
    task = "v2v" if clip.context is not None else "i2v" if clip.references else "t2v"
    return RawSample(
        key=probed.key,
        task=task,
        caption=probed.caption,
        source=clip.video,
        info=probed.info,
        video=(folder / clip.video).read_bytes() if spec.store == "bytes" else None,
        video_path=clip.video if spec.store == "paths" else None,
        references=[(folder / r).read_bytes() for r in clip.references],
        context=(folder / clip.context).read_bytes() if clip.context is not None else None,
        context_frames=probed.context_frames,
    )


def _row(folder: Path, probed: Probed, spec: PackSpec) -> dict:
    clip = probed.clip
    try:
        return encode_raw(_sample(folder, probed, spec))
    except OSError as error:
        raise PackError(
            f"{clip.video} could not be read again after it was probed ({error}); nothing was written"
        ) from error


def pack_folder(
    folder: str | Path, out: str | Path, spec: PackSpec = PackSpec(), log: Callable[[str], None] = print
) -> PackReport:
    folder, out = Path(folder).resolve(), Path(out).resolve()
    if spec.store not in ("bytes", "paths"):
        raise PackError(f"--store must be 'bytes' or 'paths', not {spec.store!r}")
    if spec.shards < 1:
        raise PackError(f"--shards must be at least 1, not {spec.shards}")
    if not folder.is_dir():
        raise PackError(f"{folder} is not a folder")
    try:
        dataset = NewDataset(out)
    except ValueError as error:
        raise PackError(str(error)) from error
    clips = scan_folder(folder)
    if not clips:
        raise PackError(f"no clips ({', '.join(VIDEO_SUFFIXES)}) under {folder}")
    report = PackReport()
    accepted: list[Probed] = []
    for key, clip in enumerate(clips):
        try:
            accepted.append(_probe(folder, clip, key, spec.limits))
        except (MediaError, OSError) as error:
            report.skipped.append((clip.video, str(error)))
        if (key + 1) % 100 == 0 or key + 1 == len(clips):
            log(f"data pack: {key + 1}/{len(clips)} clips read, {len(report.skipped)} skipped")
    for file, reason in report.skipped:
        log(f"data pack: skipped {file}: {reason}")
    if not accepted:
        raise PackError(f"none of the {len(clips)} clips under {folder} is usable (reasons above)")
    order = np.random.default_rng(spec.seed).permutation(len(accepted)).tolist()  # the shuffle happens here, once
    shards = min(spec.shards, len(accepted))
    per_shard = -(-len(accepted) // shards)
    with dataset:
        for shard in range(shards):
            picked = [accepted[i] for i in order[shard * per_shard : (shard + 1) * per_shard]]
            rows = [_row(folder, probed, spec) for probed in picked]
            path = dataset.write_shard(f"shard-{shard:05d}.parquet", rows, RAW_SCHEMA, spec.row_group_size)
            report.shards.append(path)
            log(f"data pack: shard {shard + 1}/{shards} ({len(rows)} samples) -> {path}")
        report.samples = len(accepted)
        dataset.finish(
            {
                "kind": "raw",
                "samples": report.samples,
                "shards": shards,
                "seed": spec.seed,
                "store": spec.store,
                # where video_path is relative to, from the shards' folder: a reader resolves it there
                "root": os.path.relpath(folder, out),
                "skipped": [{"file": file, "reason": reason} for file, reason in report.skipped],
            }
        )
    return report


def raw_samples(folder: str | Path):
    """Every row of a raw dataset's shards in order, decoded (a reader for tools and tests; training reads through
    the loader)."""
    for shard in list_shards(folder):
        for row in pq.read_table(shard).to_pylist():
            yield decode_raw(row)


def clip_root(folder: str | Path) -> Path:
    """The folder a raw dataset's video_path entries are relative to."""
    return (Path(folder) / read_manifest(folder).get("root", ".")).resolve()
