"""Online encoding vs pre-encoded shards: the same real clips, the same model, side by side in one run.

    .venv/bin/python bench/encode.py --clips 48 --steps 12 --repeats 2 [--plot docs/img/encode.png]

1. `omnitrain data shapes` clips, packed (`data pack`) and pre-encoded once (`data encode`, timed).
2. Training from the raw shards with spec.data.encoders (online) and from the pre-encoded shards, alternately
   (`--repeats` each): step time, the encoders' share of it, goodput (omnitrain.resilience.goodput over the steps;
   badput `data_encoding` is the encoders' time).
3. How evenly the encoding work falls on data-parallel ranks (`--ranks`): per step, the pixels each rank encodes
   (its bins' samples), max / mean, with the attention-cost balancer vs packing in stream order.

The model is the tiny preset with the MiniLM text width; both runs read identical batches (test_online.py), so the
difference is the encoders' work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from omnitrain.encoders import Encoders
from omnitrain.model.config import resolve_model_config
from omnitrain.resilience.goodput import Event, EventKind, compute_goodput
from omnitrain.spec import BucketSpec, EncodersSpec, TrainerConfig
from omnitrain.trainer.data.balance import CostModel
from omnitrain.trainer.data.encode import encode_dataset
from omnitrain.trainer.data.loader import PackedLoader
from omnitrain.trainer.data.online import OnlineEncoding
from omnitrain.trainer.data.pack import PackSpec, clip_root, pack_folder
from omnitrain.trainer.data.reader import ShardReader
from omnitrain.trainer.data.shapes import ShapesSpec, write_shapes
from omnitrain.trainer.train import train
from omnitrain.training_hooks import TrainerHooks

ENCODERS = EncodersSpec(buckets=BucketSpec(area=32 * 32, max_frames=9))
TOKEN_BUDGET = 256


def status(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StepRecorder(TrainerHooks):
    def __init__(self):
        self.steps = []

    def on_step_end(self, *, state, stats):
        self.steps.append(
            (time.monotonic(), stats.step_seconds, stats.data_seconds or 0.0, stats.encode_seconds or 0.0)
        )


def run_training(data: dict, root: Path, steps: int) -> dict:
    config = TrainerConfig.model_validate(
        {
            "spec": {
                "model": {"preset": "tiny", "textDim": 384},
                "data": {**data, "tokenBudget": TOKEN_BUDGET},
                "training": {"steps": steps, "learningRate": 3e-3, "warmupSteps": 2, "logEvery": steps},
                "checkpoint": {
                    "localPath": str(root / "local"),
                    "persistentPath": str(root / "p"),
                    "intervalSteps": 10**6,
                },
            },
            "run": {"jobName": "bench"},
        }
    )
    recorder = StepRecorder()
    began = time.monotonic()
    train(config, callbacks=[recorder], log=lambda *_, **__: None)
    ended = time.monotonic()
    events = [Event(0.0, EventKind.ATTEMPT_START, 0)]
    for i, (t, seconds, data_s, encode_s) in enumerate(recorder.steps, start=1):
        events.append(
            Event(t - began, EventKind.STEP, 0, step=i, seconds=seconds, data_seconds=data_s, encode_seconds=encode_s)
        )
    events.append(Event(ended - began, EventKind.JOB_END, 0))
    report = compute_goodput(events)
    warm = recorder.steps[1:]  # the first step pays for lazy initialisation in both runs
    return {
        "step": statistics.median(s for _, s, _, _ in warm),
        "encode": statistics.median(e for _, _, _, e in warm),
        "data": statistics.median(d for _, _, d, _ in warm),
        "goodput": report.goodput,
        "encoding_badput": report.badput_seconds["data_encoding"],
        "wall": report.wall_seconds,
    }


def rank_balance(raw: Path, encoders: Encoders, ranks: int, steps: int, balance: bool) -> list[float]:
    """Per step: max / mean over ranks of the pixels each rank encodes (planned; nothing is encoded)."""
    model = resolve_model_config("tiny", {"text_dim": 384})
    online = OnlineEncoding(encoders, clip_root(raw))
    loader = PackedLoader(
        ShardReader(raw, row_decoder=online.plan),
        model.patch_size,
        token_budget=TOKEN_BUDGET,
        cost=CostModel.of(model),
        dp_size=ranks,
        balance=balance,
    )
    ratios = []
    for _ in range(steps):
        bins = loader.next_global_step()
        work = [sum(s.bucket.frames * s.bucket.height * s.bucket.width for s in b) for b in bins]
        ratios.append(max(work) / statistics.mean(work))
    return ratios


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    step = [results[n]["step"] * 1000 for n in names]
    encode = [results[n]["encode"] * 1000 for n in names]
    other = [s - e for s, e in zip(step, encode)]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, other, label="DiT step + other input")
    ax.bar(names, encode, bottom=other, label="frozen encoders (VAE + text)")
    ax.set_ylabel("median step time (ms)")
    ax.set_title("Online encoding vs pre-encoded shards")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    status(f"plot -> {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    status(f"rendering {args.clips} clips, packing")
    write_shapes(root / "clips", ShapesSpec(clips=args.clips, seed=0), log=lambda *_: None)
    pack_folder(root / "clips", root / "raw", PackSpec(shards=4), log=lambda *_: None)
    encoders = Encoders.load(ENCODERS)
    began = time.monotonic()
    encode_dataset(root / "raw", root / "encoded", encoders, log=status)
    pre_seconds = time.monotonic() - began
    status(f"pre-encoding: {args.clips} clips in {pre_seconds:.1f} s ({pre_seconds / args.clips * 1000:.0f} ms a clip)")
    runs: dict[str, list[dict]] = {"online": [], "pre-encoded": []}
    for repeat in range(args.repeats):
        for name, data in (
            ("online", {"path": str(root / "raw"), "encoders": ENCODERS.to_wire()}),
            ("pre-encoded", {"path": str(root / "encoded")}),
        ):
            status(f"repeat {repeat + 1}/{args.repeats}: training {args.steps} steps, {name}")
            runs[name].append(run_training(data, root / f"{name}-{repeat}", args.steps))
    results = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    print()
    print(f"{'':14}{'step ms':>10}{'encoders ms':>13}{'enc share':>11}{'goodput':>10}")
    for name, r in results.items():
        share = r["encode"] / r["step"] if r["step"] else 0.0
        print(f"{name:14}{r['step'] * 1000:10.0f}{r['encode'] * 1000:13.0f}{share:11.1%}{r['goodput']:10.3f}")
    on, pre = results["online"], results["pre-encoded"]
    print(f"\nstep time online / pre-encoded: {on['step'] / pre['step']:.2f}")
    print(f"goodput online / pre-encoded: {on['goodput'] / pre['goodput']:.2f}")
    print(f"encoders' share of the online step: {on['encode'] / on['step']:.1%}")
    for balance in (True, False):
        ratios = rank_balance(root / "raw", encoders, args.ranks, args.steps, balance)
        label = "attention-cost balancer" if balance else "stream order (balance: false)"
        print(
            f"encoding work over {args.ranks} data ranks, max/mean per step, {label}: "
            f"median {statistics.median(ratios):.2f}, worst {max(ratios):.2f}"
        )
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
