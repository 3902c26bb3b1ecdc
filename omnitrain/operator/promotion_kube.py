"""The thin API layer of promotion: read the distillation Job and serving Deployment of a succeeded job, run the
pure planner (omnitrain.operator.promotion), create what it returns, write status.promotion, post its events."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from omnitrain.operator import plan
from omnitrain.operator.promotion import (
    DEFAULT_DISTILL_COMMAND,
    DEFAULT_SERVE_COMMAND,
    PromotionOptions,
    distill_job_name,
    plan_promotion,
    serve_name,
)
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus


def options_from_env(env: dict[str, str] | None = None) -> PromotionOptions:
    """OMNITRAIN_DISTILL_COMMAND / OMNITRAIN_SERVE_COMMAND override the container commands (local clusters run
    them as processes of the project's venv)."""
    e = os.environ if env is None else env
    distill, serve = e.get("OMNITRAIN_DISTILL_COMMAND"), e.get("OMNITRAIN_SERVE_COMMAND")
    return PromotionOptions(
        distill_command=shlex.split(distill) if distill else list(DEFAULT_DISTILL_COMMAND),
        serve_command=shlex.split(serve) if serve else list(DEFAULT_SERVE_COMMAND),
        cluster_domain=e.get("OMNITRAIN_CLUSTER_DOMAIN", plan.CLUSTER_DOMAIN),
    )


def _read(call, *args) -> dict | None:
    try:
        return json.loads(call(*args, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _create(api_client, obj: dict) -> None:
    ns, kind = obj["metadata"]["namespace"], obj["kind"]
    creators: dict[str, Callable[..., Any]] = {
        "Job": client.BatchV1Api(api_client).create_namespaced_job,
        "Deployment": client.AppsV1Api(api_client).create_namespaced_deployment,
        "Service": client.CoreV1Api(api_client).create_namespaced_service,
    }
    create = creators[kind]
    try:
        create(ns, obj)
    except ApiException as exc:
        if exc.status != 409:  # AlreadyExists: an earlier pass created it (idempotent)
            raise


def promote(
    kube, job: dict, spec: JobSpec, status: JobStatus, now: str, options: PromotionOptions | None = None
) -> bool:
    """One promotion pass for `job` (a dict from the API, `status` its status as the caller knows it now). True when
    something changed."""
    meta = job["metadata"]
    ns, name = meta["namespace"], meta["name"]
    ref = plan.JobRef(name=name, namespace=ns, uid=meta["uid"])
    api = kube.api_client
    distill = _read(client.BatchV1Api(api).read_namespaced_job, distill_job_name(name), ns)
    deployment = _read(client.AppsV1Api(api).read_namespaced_deployment, serve_name(name), ns)
    decision = plan_promotion(ref, spec, status, distill, deployment, now, options or options_from_env())
    if decision is None:
        return False
    for obj in decision.create:
        _create(api, obj)
    changed = kube.write_status(job, status.model_copy(update={"promotion": decision.promotion}))
    for event in decision.events:
        kube.post_event(job, event)
    return changed or bool(decision.create)


__all__ = ["options_from_env", "promote"]
