"""MP4 (any container FFmpeg reads) to frames and back, in memory, through PyAV.

Bad media is a `MediaError` whose message says what is wrong with it (not a video, no frames, too large), checked
against `MediaLimits` from the stream's header before frames are decoded, so a hostile file cannot make the reader
decode 10,000 x 10,000 frames."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


class MediaError(ValueError):
    """Media that cannot be used; the message names the reason (the caller adds which file or field)."""


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 512 << 20
    max_frames: int = 2048
    max_side: int = 4096


DEFAULT_LIMITS = MediaLimits()


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    height: int
    width: int
    fps: float

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


@dataclass
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3], RGB
    fps: float

    @property
    def info(self) -> VideoInfo:
        t, h, w, _ = self.frames.shape
        return VideoInfo(frames=t, height=h, width=w, fps=self.fps)


def _read(source: bytes | str | Path, limits: MediaLimits) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise MediaError(f"{size} bytes, more than the limit of {limits.max_bytes}")
        data = path.read_bytes()
    if not data:
        raise MediaError("empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaError(f"{len(data)} bytes, more than the limit of {limits.max_bytes}")
    return data


def decode_video(source: bytes | str | Path, limits: MediaLimits = DEFAULT_LIMITS, take: int | None = None) -> Clip:
    """All frames (or the first `take`) as RGB uint8. Raises MediaError for anything FFmpeg cannot decode."""
    import av  # PyAV is in the trainer/serving images only

    data = _read(source, limits)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("not a video: the file has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width > limits.max_side or height > limits.max_side:
                raise MediaError(f"{width}x{height} pixels, more than the limit of {limits.max_side} on a side")
            if stream.frames and stream.frames > limits.max_frames and take is None:
                raise MediaError(f"{stream.frames} frames, more than the limit of {limits.max_frames}")
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            frames: list[np.ndarray] = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if take is not None and len(frames) >= take:
                    break
                if len(frames) > limits.max_frames:
                    raise MediaError(f"more than the limit of {limits.max_frames} frames")
    except MediaError:
        raise
    except Exception as error:  # PyAV raises FFmpeg's errors under several classes (InvalidDataError, EOFError...)
        raise MediaError(f"not a readable video ({type(error).__name__}: {error})") from error
    if not frames:
        raise MediaError("the video stream holds no frames")
    return Clip(frames=np.stack(frames), fps=float(rate))


def probe_video(source: bytes | str | Path, limits: MediaLimits = DEFAULT_LIMITS) -> VideoInfo:
    """The clip's size, found by decoding it whole: a file that is torn half-way is found here, not in training."""
    return decode_video(source, limits).info


def encode_video(frames: np.ndarray, fps: float = 8.0, quantizer: int = 18) -> bytes:
    """uint8 [T, H, W, 3] RGB -> MP4 bytes (H.264, yuv420p; odd sides are padded by one edge row/column because
    4:2:0 chroma needs even sides)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise MediaError(f"frames must be uint8 [T>0, H, W, 3], not {frames.dtype} {list(frames.shape)}")
    rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(0)
    if rate <= 0:  # 5e-324 frames a second is > 0 and rounds to none
        raise MediaError(f"fps must be a positive rate MP4 can hold, not {fps!r}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(_h264_encoder(), rate=rate)
        assert isinstance(stream, av.video.stream.VideoStream)  # a video codec's name gives a video stream
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Constant quantiser, one thread: with crf rate control x264 sometimes turned the same frames into different
        # bytes from one call to the next (the server's same-seed test failed intermittently; not reproduced on
        # demand, bench/encode_determinism.py), and "same seed, same video" is a promise of the server.
        stream.codec_context.thread_count = 1
        if stream.codec_context.name == "libx264":
            stream.options = {"qp": str(quantizer), "preset": "veryfast", "threads": "1"}
        stream.codec_context.time_base = 1 / rate
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate  # unset, they were whatever the last frame left behind
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _h264_encoder() -> str:
    import av

    # PyAV's wheels ship libx264; a system FFmpeg build may only have its own encoders
    for name in ("libx264", "h264", "mpeg4"):
        if name in av.codecs_available:
            return name
    raise MediaError("this FFmpeg build has no H.264 or MPEG-4 encoder")
