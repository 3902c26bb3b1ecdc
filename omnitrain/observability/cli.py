"""Subcommands of this area (registered by omnitrain.cli): `omnitrain status` and `omnitrain report`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands; imports of heavy modules happen inside the handlers."""
    status = subparsers.add_parser("status", help="one OmniTrainingJob at a glance (phase, progress, pods, events)")
    status.add_argument("job", help="name of the OmniTrainingJob")
    status.add_argument("-n", "--namespace", default="default")
    status.add_argument(
        "--no-live", action="store_true", help="do not scrape rank 0's metrics endpoint for tokens/s, MFU and step time"
    )
    status.set_defaults(func=_status)

    report = subparsers.add_parser("report", help="PNG + HTML report of a job (loss, MFU, tokens/s, goodput)")
    report.add_argument("job", help="name of the OmniTrainingJob")
    report.add_argument("--out", required=True, help="folder to write report.png and report.html into")
    report.add_argument("-n", "--namespace", default="default")
    report.add_argument(
        "--metrics-dir",
        required=True,
        help=(
            "folder with the job's attempt-*.jsonl metrics log "
            "(<checkpoint persistentPath>/<job>/metrics on the job's volume)"
        ),
    )
    report.add_argument("--offline", action="store_true", help="do not read the job's status from the API server")
    report.set_defaults(func=_report)


def _status(args: argparse.Namespace) -> int:
    from omnitrain.observability.status_fetch import ClusterUnreachable, JobNotFound, fetch_job, scrape_live_metrics
    from omnitrain.observability.status_view import render_status

    try:
        snapshot = fetch_job(args.job, args.namespace)
    except (JobNotFound, ClusterUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    live = None
    if not args.no_live:
        port = int((snapshot.job.get("spec") or {}).get("metricsPort", 9400))
        live = scrape_live_metrics(snapshot.pods, port)
    sys.stdout.write(render_status(snapshot.job, snapshot.pods, snapshot.events, live=live))
    return 0


def _report(args: argparse.Namespace) -> int:
    from omnitrain.metrics_log import read_job_log
    from omnitrain.observability.report import write_report

    status, created = None, None
    if not args.offline:
        from omnitrain.observability.status_fetch import fetch_job
        from omnitrain.status import JobStatus
        from omnitrain.timestamps import parse_rfc3339

        try:
            job = fetch_job(args.job, args.namespace).job
            status = JobStatus.from_wire(job.get("status"))
            created = parse_rfc3339((job.get("metadata") or {}).get("creationTimestamp"))
        except Exception as exc:  # the log alone still makes a report; say what is missing
            print(
                f"warning: job status not read from the API server ({exc}); the report uses the metrics log only",
                file=sys.stderr,
            )
    try:
        log = read_job_log(args.metrics_dir)
        png, page = write_report(log, args.out, f"{args.namespace}/{args.job}", status, job_created=created)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {png} and {page}")
    return 0
