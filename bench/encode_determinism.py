"""Why encoding is pinned the way it is (omnitrain/trainer/data/encoders.py, omnitrain/media/video.py): how far the
frozen encoders' outputs move with the CPU thread count and with batching, and how many distinct MP4 files x264
makes of the same frames in crf and in constant-quantiser mode.

    .venv/bin/python bench/encode_determinism.py [--encodings 20]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import torch

from omnitrain.encoders import Encoders
from omnitrain.media.video import encode_video
from omnitrain.spec import BucketSpec, EncodersSpec
from omnitrain.trainer.data.encoders import encode_raw_sample
from omnitrain.trainer.data.pack import PackSpec, clip_root, pack_folder, raw_samples
from omnitrain.trainer.data.shapes import ShapeMotion, ShapesSpec, render, write_shapes


def crf_encode(frames: np.ndarray) -> bytes:
    """H.264 with x264's default crf rate control (what encode_video used before it pinned a quantiser)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encodings", type=int, default=20)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-determinism-"))
    write_shapes(root / "clips", ShapesSpec(clips=3, seed=1), log=lambda *_: None)
    pack_folder(root / "clips", root / "raw", PackSpec(shards=1), log=lambda *_: None)
    samples = list(raw_samples(root / "raw"))
    by_threads = {}
    for threads in (1, 2):
        spec = EncodersSpec(buckets=BucketSpec(area=32 * 32, max_frames=9), cpu_threads=threads)
        encoders = Encoders.load(spec)
        by_threads[threads] = [encode_raw_sample(s, encoders, clip_root(root / "raw")) for s in samples]
    video = max(float((a.video - b.video).abs().max()) for a, b in zip(by_threads[1], by_threads[2]))
    text = max(float((a.text - b.text).abs().max()) for a, b in zip(by_threads[1], by_threads[2]))
    print(f"1 vs 2 CPU threads: VAE latents differ by up to {video:.2e}, MiniLM embeddings by up to {text:.2e}")
    minilm = encoders.text.model
    captions = ["a red circle moving left", "a blue square moving up quickly"]
    batched = minilm.encode(captions, output_value="token_embeddings", convert_to_numpy=False)
    alone = minilm.encode(captions[:1], output_value="token_embeddings", convert_to_numpy=False)
    print(
        f"MiniLM, one caption alone vs in a padded batch of two: up to {float((batched[0] - alone[0]).abs().max()):.2e}"
    )
    frames = np.concatenate([render(ShapeMotion("red", "circle", d, 9, 32, 64)) for d in ("left", "up")])
    crf = {crf_encode(frames) for _ in range(args.encodings)}
    qp = {encode_video(frames) for _ in range(args.encodings)}
    print(
        f"x264, the same 18 frames encoded {args.encodings} times: crf {len(crf)} distinct files, "
        f"constant quantiser (encode_video) {len(qp)}"
    )
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
