"""A folder of real MP4 clips with captions a model can learn from: a shape of a named colour moving in a named
direction ("a red circle moving left"), rendered frame by frame and encoded with H.264.

The layout is the one `omnitrain data pack` reads (pack.py): `<name>.mp4` with `<name>.txt` beside it, and for some
clips a reference image `<name>.ref.png` (the first frame: an i2v sample) or a context clip `<name>.context.mp4` (the
same shape moving the other way: a v2v sample). Sizes vary over a few aspect ratios and lengths, so the buckets have
something to do. Deterministic for a seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnitrain.media.image import encode_png
from omnitrain.media.video import encode_video

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
    "white": (240, 240, 240),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SIZES = ((64, 64), (48, 80), (80, 48))  # (height, width)
FRAME_COUNTS = (9, 13, 17)


@dataclass(frozen=True)
class ShapesSpec:
    clips: int = 24
    seed: int = 0
    fps: float = 8.0
    reference_fraction: float = 0.25
    context_fraction: float = 0.25


@dataclass(frozen=True)
class ShapeMotion:
    colour: str
    shape: str
    direction: str
    frames: int
    height: int
    width: int

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


def render(motion: ShapeMotion) -> np.ndarray:
    """uint8 [T, H, W, 3]: the shape crosses the frame from one side to the other over the clip."""
    t = np.arange(motion.frames, dtype=np.float32)[:, None, None]
    y = np.arange(motion.height, dtype=np.float32)[None, :, None]
    x = np.arange(motion.width, dtype=np.float32)[None, None, :]
    radius = min(motion.height, motion.width) / 6
    dy, dx = DIRECTIONS[motion.direction]
    progress = t / max(1, motion.frames - 1)  # 0 -> 1
    cy = motion.height / 2 + dy * (progress - 0.5) * (motion.height - 2 * radius)
    cx = motion.width / 2 + dx * (progress - 0.5) * (motion.width - 2 * radius)
    if motion.shape == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    else:
        inside = (np.abs(y - cy) <= radius) & (np.abs(x - cx) <= radius)
    frames = np.full((motion.frames, motion.height, motion.width, 3), 16, dtype=np.uint8)
    frames[inside] = COLOURS[motion.colour]
    return frames


def draw(spec: ShapesSpec) -> list[tuple[ShapeMotion, str]]:
    """The clips of a spec: (motion, kind) with kind "t2v", "i2v" or "v2v"."""
    rng = np.random.default_rng(spec.seed)
    drawn = []
    for _ in range(spec.clips):
        height, width = SIZES[rng.integers(len(SIZES))]
        motion = ShapeMotion(
            colour=list(COLOURS)[rng.integers(len(COLOURS))],
            shape=SHAPES[rng.integers(len(SHAPES))],
            direction=list(DIRECTIONS)[rng.integers(len(DIRECTIONS))],
            frames=int(FRAME_COUNTS[rng.integers(len(FRAME_COUNTS))]),
            height=int(height),
            width=int(width),
        )
        u = rng.random()
        kind = (
            "i2v"
            if u < spec.reference_fraction
            else "v2v"
            if u < spec.reference_fraction + spec.context_fraction
            else "t2v"
        )
        drawn.append((motion, kind))
    return drawn


def write_shapes(out: str | Path, spec: ShapesSpec, log=print) -> list[Path]:
    """Write the clips, captions, references and contexts under `out`; returns the clips' paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (motion, kind) in enumerate(draw(spec)):
        name = f"clip-{index:05d}"
        frames = render(motion)
        (out / f"{name}.mp4").write_bytes(encode_video(frames, fps=spec.fps))
        (out / f"{name}.txt").write_text(motion.caption + "\n")
        if kind == "i2v":
            (out / f"{name}.ref.png").write_bytes(encode_png(frames[0]))
        elif kind == "v2v":
            context = ShapeMotion(**{**motion.__dict__, "direction": OPPOSITE[motion.direction]})
            (out / f"{name}.context.mp4").write_bytes(encode_video(render(context), fps=spec.fps))
        paths.append(out / f"{name}.mp4")
        if (index + 1) % 50 == 0 or index + 1 == spec.clips:
            log(f"data shapes: {index + 1}/{spec.clips} clips -> {out}")
    return paths
