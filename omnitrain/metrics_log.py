"""The metrics log a job leaves on its persistent volume: one JSONL file per attempt, one record per line.

Written by rank 0's metrics callback (omnitrain.observability.callback) and, for `hang`, by node rank 0's watchdog
(omnitrain.resilience.watchdog); read by `omnitrain report` and goodput (omnitrain.resilience.goodput). Plain
Python at the bottom of the layers, so that resilience writes it without importing observability. Appending one
flushed line per event means a killed attempt loses at most the line being written; a torn last line is skipped on
reading, never fatal.

Record kinds (all carry `kind`, `time` (unix seconds) and `attempt`):
  start       {step (resumed from), total_steps, world_size, peak_flops (per device or null)}
  step        {step, loss, step_seconds, tokens, tokens_per_second, mfu (or null)}
  checkpoint  {step, blocking_seconds} when a save blocked the loop; {step, complete: true} when it is complete
  restore     {step, seconds}
  hang        {step, stalled_ranks} (the watchdog, before it ends the pod)
  generation  {generation, nnodes, started} stamped at the announcement (node rank 0's watchdog, before it starts
              the workers of an in-place restart generation)
  goodput     {goodput, badput_seconds: {cause: s}}
  end         {step, reason}
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_FILE_RE = re.compile(r"^attempt-(\d+)\.jsonl$")


def attempt_log_path(log_dir: str | os.PathLike, attempt: int) -> Path:
    return Path(log_dir) / f"attempt-{attempt:04d}.jsonl"


class StepLogWriter:
    """Appends records to one attempt's file. Appending (not truncating) keeps what a previous run of the same
    attempt number wrote: nothing is silently overwritten."""

    def __init__(self, log_dir: str | os.PathLike, attempt: int) -> None:
        self.path = attempt_log_path(log_dir, attempt)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.attempt = attempt
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, kind: str, time: float, **fields) -> None:
        record = {"kind": kind, "time": time, "attempt": self.attempt, **fields}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


@dataclass
class JobLog:
    """All records of a job, in attempt order then file order."""

    records: list[dict] = field(default_factory=list)
    skipped_lines: int = 0

    def of_kind(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def attempts(self) -> list[int]:
        return sorted({int(r["attempt"]) for r in self.records if "attempt" in r})


def read_job_log(log_dir: str | os.PathLike) -> JobLog:
    """Read every attempt-*.jsonl under log_dir. Lines that are not JSON objects (a torn last line) are counted in
    `skipped_lines`, not raised."""
    folder = Path(log_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"metrics log folder {folder} does not exist; pass the folder holding the "
            "attempt-*.jsonl files (<checkpoint persistentPath>/<job>/metrics on the job's "
            "volume)"
        )
    files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE_RE.match(p.name)))
    log = JobLog()
    for _, path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.skipped_lines += 1
                    continue
                if isinstance(record, dict) and "kind" in record:
                    log.records.append(record)
                else:
                    log.skipped_lines += 1
    return log


__all__ = ["JobLog", "StepLogWriter", "attempt_log_path", "read_job_log"]
