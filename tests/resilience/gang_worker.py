"""A stand-in for torchrun under a generation-following `omnitrain watchdog`: writes the environment it was started
with to <out>/generation-<OMNITRAIN_ATTEMPT>.json (atomically; -rank-<RANK> added under torchrun), then runs until
killed, or exits with a code in a chosen generation."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

KEYS = (
    "PET_NNODES",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fail-in", type=int, action="append", default=[], help="exit 1 in this generation")
    p.add_argument("--finish-in", type=int, action="append", default=[], help="exit 0 in this generation")
    p.add_argument(
        "--fail-on-newer",
        metavar="GANG_FILE",
        help="exit 1 as soon as this file announces a newer generation (as a rank whose peer died does)",
    )
    args = p.parse_args()
    generation = int(os.environ["OMNITRAIN_ATTEMPT"])
    seen = {k: os.environ.get(k) for k in KEYS}
    seen.update(generation=generation, pid=os.getpid(), ppid=os.getppid())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"generation-{generation}" + (f"-rank-{os.environ['RANK']}" if "RANK" in os.environ else "") + ".json"
    tmp = out / f".{name}"
    tmp.write_text(json.dumps(seen))
    os.replace(tmp, out / name)
    if generation in args.fail_in:
        return 1
    if generation in args.finish_in:
        return 0
    if args.fail_on_newer:
        while True:  # polls far faster than the supervisor does: the exit usually comes before its kill
            try:
                if json.loads(Path(args.fail_on_newer).read_text())["generation"] > generation:
                    return 1
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
    threading.Event().wait()  # training until the supervisor stops us
    return 0


if __name__ == "__main__":
    sys.exit(main())
