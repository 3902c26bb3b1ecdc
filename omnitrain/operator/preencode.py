"""Pre-encoding before the first launch (spec.data.preEncode), planned as pure functions: a batch Job owned by the
job runs `omnitrain data encode` from data.path into preEncode.path with data.encoders; the gang is launched only
once it succeeded (condition DataEncoded), and a failed encoding fails the job naming the Job. The reconcile step
that gates the launch is `reconcile.pre_encoding`; the thin layer reads and creates the Job (handlers.py)."""

from __future__ import annotations

import json

from omnitrain.operator import plan
from omnitrain.operator.promotion import batch_job_phase, render_batch_job
from omnitrain.spec import JobSpec

ENCODE_CONTAINER = "encode"
LABEL_ROLE_ENCODE = "encode"
DEFAULT_ENCODE_COMMAND = ["omnitrain", "data", "encode"]


def encode_job_name(job: str) -> str:
    return plan.fit_name(job, "-encode")


def encode_command(spec: JobSpec, base: list[str] | None = None) -> list[str]:
    """The Job's command: the raw folder, the output, the encoders as JSON (no ConfigMap exists before the first
    launch), reuse of an output the same encoders made from the same folder."""
    data = spec.data
    assert data.pre_encode is not None and data.encoders is not None
    return [
        *(base or DEFAULT_ENCODE_COMMAND),
        data.path,
        "--out",
        data.pre_encode.path,
        "--encoders-json",
        json.dumps(data.encoders.to_wire(), sort_keys=True),
        "--on-corrupt",
        data.on_corrupt,
        "--reuse",
    ]


def render_encode_job(
    job: plan.JobRef, spec: JobSpec, base_command: list[str] | None = None, image_pull_policy: str = "IfNotPresent"
) -> dict:
    return render_batch_job(
        job,
        spec,
        encode_job_name(job.name),
        LABEL_ROLE_ENCODE,
        ENCODE_CONTAINER,
        encode_command(spec, base_command),
        image_pull_policy,
        with_config=False,
    )


def encode_job_phase(observed: dict | None) -> tuple[str, str]:
    """(phase, message) of the pre-encoding Job: Pending (absent), Running, Succeeded or Failed."""
    return batch_job_phase(observed, "pre-encoding", "dataset encoded", "encoding")


__all__ = [
    "DEFAULT_ENCODE_COMMAND",
    "encode_command",
    "encode_job_name",
    "encode_job_phase",
    "render_encode_job",
]
