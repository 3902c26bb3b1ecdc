"""Subcommands of this area (registered by omnitrain.cli)."""

from __future__ import annotations

import argparse


def _watchdog(args: argparse.Namespace) -> int:
    from omnitrain.resilience.watchdog import main

    return main(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands; imports of heavy modules happen inside the handlers."""
    p = subparsers.add_parser(
        "watchdog",
        help="run the training workers under the hang/hardware watchdog (the pod's main process)",
        description=(
            "Start COMMAND (e.g. torchrun ... -m omnitrain train --config FILE) in its own process group, "
            "watch per-rank heartbeats and RDMA counters, and end the pod with exit code 42 (hang) or 43 "
            "(hardware) and a termination message; otherwise exit with the workers' code."
        ),
    )
    p.add_argument("--config", help="trainer config (reads spec.resilience.hangTimeoutSeconds, gpusPerNode)")
    p.add_argument("--timeout", type=float, help="hang timeout in seconds (overrides the config)")
    p.add_argument("--startup-timeout", type=float, help="leash before the first step (default 10 x timeout)")
    p.add_argument(
        "--long-section-timeout", type=float, help="leash inside checkpoint/eval sections (default 5 x timeout)"
    )
    p.add_argument("--no-learn", action="store_true", help="do not learn a shorter timeout from step times")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps not learned from (default 3)")
    p.add_argument("--safety-factor", type=float, default=5.0, help="learned timeout = factor x slowest step")
    p.add_argument("--min-timeout", type=float, default=5.0, help="floor of a learned timeout (seconds)")
    p.add_argument("--workers", type=int, help="worker processes in this pod (default PET_NPROC_PER_NODE)")
    p.add_argument("--heartbeat-dir", help="pod-local folder for heartbeats (default: a fresh temp folder)")
    p.add_argument("--rdma-root", help="RDMA sysfs root (default $OMNITRAIN_RDMA_ROOT or /sys/class/infiniband)")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    p.add_argument("--status-every", type=float, default=30.0, help="seconds between status lines")
    p.add_argument("--no-gpu-health", action="store_true", help="skip NVML XID/ECC checks")
    p.add_argument(
        "--termination-log",
        help="termination message file (default $OMNITRAIN_TERMINATION_LOG or /dev/termination-log)",
    )
    p.add_argument(
        "--metrics-log-dir",
        help="append a `hang` record to the job's metrics log here (default from "
        "--config on node rank 0: <checkpoint root>/<job>/metrics)",
    )
    p.add_argument("--attempt", type=int, help="attempt number for the metrics log (default $OMNITRAIN_ATTEMPT)")
    p.add_argument(
        "--gang-file",
        help="follow the restart generations announced in this file (default $OMNITRAIN_GANG_FILE; in-place "
        "gang restarts: the command is started per generation with PET_NNODES/PET_NODE_RANK/PET_MASTER_* from it)",
    )
    p.add_argument(
        "--state-dir",
        help="folder that survives the container's restarts, for the failed generation (default $OMNITRAIN_STATE_DIR)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(func=_watchdog)
