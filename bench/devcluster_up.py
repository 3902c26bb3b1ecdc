"""Start-up time of the local cluster (omnitrain/devcluster), side by side in one run:
fresh folder (certificates generated, empty etcd), warm restart after `down` (same folder), and `up` while it runs
(the idempotent no-op). Each round uses its own temporary folder; times are wall seconds until `up` returns
(control plane healthy, nodes Ready and schedulable, default ServiceAccount present).

    .venv/bin/python bench/devcluster_up.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from omnitrain.devcluster.cluster import LocalCluster


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()
    quiet = lambda _: None  # noqa: E731
    results: dict[str, list[float]] = {"fresh folder": [], "warm restart": [], "already running": []}
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
            cluster = LocalCluster(Path(tmp) / "cluster")
            try:
                results["fresh folder"].append(timed(lambda: cluster.up(nodes=args.nodes, log=quiet)))
                results["already running"].append(timed(lambda: cluster.up(nodes=args.nodes, log=quiet)))
                cluster.down(log=quiet)
                results["warm restart"].append(timed(lambda: cluster.up(nodes=args.nodes, log=quiet)))
            finally:
                cluster.down(log=quiet)
        print(
            f"[bench] round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()),
            flush=True,
        )
    base = statistics.median(results["fresh folder"])
    print("\n| `dev up` | median s | min s | ratio to fresh |\n| --- | --- | --- | --- |")
    for name, values in results.items():
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {statistics.median(values) / base:.2f} |"
        )


if __name__ == "__main__":
    main()
