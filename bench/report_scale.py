"""How long `omnitrain report` takes on a long job's metrics log (synthetic, written with the real log writer).

    .venv/bin/python bench/report_scale.py --steps 100000 --out bench/out/report_scale

Two attempts (a restart at 40% that resumes 1,000 steps back), a checkpoint every 500 steps. Prints the time to
read the log and to write the PNG + HTML. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from omnitrain.metrics_log import StepLogWriter, read_job_log  # noqa: E402
from omnitrain.observability.report import write_report  # noqa: E402


def write_log(folder: str, steps: int) -> None:
    t = 1.0e9
    crash = int(steps * 0.4)
    for attempt, (first, last) in enumerate([(0, crash), (crash - 1000, steps)]):
        writer = StepLogWriter(folder, attempt)
        writer.write("start", t, step=first, total_steps=steps, world_size=64, peak_flops=989.4e12)
        for step in range(first + 1, last + 1):
            t += 1.0
            writer.write(
                "step",
                t,
                step=step,
                loss=1.0 / step**0.3,
                step_seconds=0.98,
                tokens=1e6,
                tokens_per_second=1.02e6,
                mfu=0.41,
            )
            if step % 500 == 0:
                t += 0.2
                writer.write("checkpoint", t, step=step, blocking_seconds=0.2)
                writer.write("checkpoint", t, step=step, complete=True)
        writer.close()
        t += 300.0  # down time of the restart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--out", default=None, help="folder for report.png/html (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(f"writing a {args.steps}-step log ...", flush=True)
        write_log(folder, args.steps)
        started = time.perf_counter()
        log = read_job_log(folder)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        png, page = write_report(log, args.out or os.path.join(folder, "out"), "bench/long-job")
        report_s = time.perf_counter() - started
        print(
            f"{len(log.records)} records: read {read_s:.2f} s, report (goodput timeline + PNG + HTML) "
            f"{report_s:.2f} s -> {png}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
