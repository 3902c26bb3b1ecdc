"""The promotion chain of a succeeded job, planned as pure functions: training -> distillation (a batch Job running
`omnitrain distill` on the final checkpoint) -> serving (a Deployment + Service running `omnitrain serve` on the
student, ready on /readyz). Every child is owned by the OmniTrainingJob; the operator's thin layer reads the
children, calls `plan_promotion`, creates what it returns and patches `status.promotion`.

What a stage reached is recorded in status, so a deleted child is not silently re-run: a succeeded distillation
stays succeeded (and its student is on the claim) even if its Job object is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omnitrain import contract
from omnitrain.operator import plan
from omnitrain.operator.reconcile import Event
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus, Promotion, PromotionStage

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
PROGRESSING, READY = "Progressing", "Ready"
LABEL_ROLE_DISTILL, LABEL_ROLE_SERVE = "distill", "serve"
SERVE_CONTAINER, DISTILL_CONTAINER = "server", "distill"

DEFAULT_DISTILL_COMMAND = ["omnitrain", "distill", "--config", contract.CONFIG_PATH]
DEFAULT_SERVE_COMMAND = ["omnitrain", "serve"]


@dataclass(frozen=True)
class PromotionOptions:
    """Operator settings for the promotion children (tests run them as local processes)."""

    distill_command: list[str] = field(default_factory=lambda: list(DEFAULT_DISTILL_COMMAND))
    serve_command: list[str] = field(default_factory=lambda: list(DEFAULT_SERVE_COMMAND))
    image_pull_policy: str = "IfNotPresent"
    cluster_domain: str = plan.CLUSTER_DOMAIN


@dataclass
class PromotionDecision:
    create: list[dict] = field(default_factory=list)
    promotion: Promotion = field(default_factory=Promotion)  # the new status.promotion
    events: list[Event] = field(default_factory=list)


def distill_job_name(job: str) -> str:
    return plan.fit_name(job, "-distill")


def serve_name(job: str) -> str:
    return plan.fit_name(job, "-serve")


def wanted(spec: JobSpec) -> tuple[bool, bool]:
    """(distillation, serving) enabled in the spec."""
    p = spec.promotion
    return bool(p.distill and p.distill.enabled), bool(p.inference and p.inference.enabled)


def endpoint(job: plan.JobRef, spec: JobSpec, domain: str = plan.CLUSTER_DOMAIN) -> str:
    port = spec.promotion.inference.port if spec.promotion.inference else 8080
    return f"http://{serve_name(job.name)}.{job.namespace}.svc.{domain}:{port}"


def served_checkpoint(job: plan.JobRef, spec: JobSpec) -> str:
    """The student when distillation runs; otherwise the job's checkpoint folder (its newest complete step)."""
    distill, _ = wanted(spec)
    if distill:
        return contract.student_path(spec.checkpoint.persistent_path, job.name)
    return spec.checkpoint.job_root(job.name)


LABEL_PROMOTED_FROM = "omnitrain.io/promoted-from"


def _labels(job: str, role: str) -> dict[str, str]:
    # Not the training pods' omnitrain.io/job-name label: the job's reconcile treats pods with that label as its
    # gang (and cleans up leftovers of a finished job).
    return {
        LABEL_PROMOTED_FROM: plan.label_value(job),
        "app.kubernetes.io/name": "omnitrain",
        "app.kubernetes.io/instance": plan.label_value(job),
        plan.LABEL_ROLE: role,
    }


def _volumes(job: plan.JobRef, spec: JobSpec) -> tuple[list[dict], list[dict]]:
    mounts = [{"name": plan.CONFIG_VOLUME, "mountPath": contract.CONFIG_MOUNT, "readOnly": True}]
    volumes = [{"name": plan.CONFIG_VOLUME, "configMap": {"name": plan.config_map_name(job.name)}}]
    if spec.checkpoint.persistent_claim:
        mounts.append({"name": plan.PERSISTENT_VOLUME, "mountPath": spec.checkpoint.persistent_path})
        volumes.append(
            {"name": plan.PERSISTENT_VOLUME, "persistentVolumeClaim": {"claimName": spec.checkpoint.persistent_claim}}
        )
    else:
        mounts.append({"name": plan.LOCAL_VOLUME, "mountPath": spec.checkpoint.local_path})
        volumes.append(
            {"name": plan.LOCAL_VOLUME, "hostPath": {"path": spec.checkpoint.local_path, "type": "DirectoryOrCreate"}}
        )
    return mounts, volumes


def _resources(spec: JobSpec) -> dict:
    gpu = {spec.scheduling.gpu_resource: "1"}
    requests = dict(gpu)
    if spec.resources.memory:
        requests["memory"] = spec.resources.memory
    return {"limits": gpu, "requests": requests}


def render_distill_job(
    job: plan.JobRef, spec: JobSpec, options: PromotionOptions, excluded_nodes: list[str] | None = None
) -> dict:
    return render_batch_job(
        job,
        spec,
        distill_job_name(job.name),
        LABEL_ROLE_DISTILL,
        DISTILL_CONTAINER,
        list(options.distill_command),
        options.image_pull_policy,
        excluded_nodes,
    )


def render_batch_job(
    job: plan.JobRef,
    spec: JobSpec,
    name: str,
    role: str,
    container_name: str,
    command: list[str],
    image_pull_policy: str = "IfNotPresent",
    excluded_nodes: list[str] | None = None,
    with_config: bool = True,
) -> dict:
    """A batch Job of the job's image on one GPU, owned by the job, with its volumes (and the trainer config's
    ConfigMap when `with_config`): distillation after training, pre-encoding before it."""
    mounts, volumes = _volumes(job, spec)
    if not with_config:  # before the first launch the ConfigMap does not exist yet
        mounts = [m for m in mounts if m["name"] != plan.CONFIG_VOLUME]
        volumes = [v for v in volumes if v["name"] != plan.CONFIG_VOLUME]
    container = {
        "name": container_name,
        "image": spec.image,
        "imagePullPolicy": image_pull_policy,
        "command": command,
        "volumeMounts": mounts,
        "resources": _resources(spec),
        "env": [{"name": contract.TERMINATION_LOG_ENV, "value": contract.DEFAULT_TERMINATION_LOG}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    labels = _labels(job.name, role)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": labels,
            "ownerReferences": [plan.owner_reference(job)],
        },
        # One retry for a crash; a bad config exits 3 every time, which podFailurePolicy turns into a failure now.
        "spec": {
            "backoffLimit": 1,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": container_name,
                            "operator": "In",
                            "values": sorted(int(c) for c in contract.PERMANENT_EXIT_CODES),
                        },
                    }
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": plan.pod_skeleton(spec, [container], volumes, "Never", excluded_nodes),
            },
        },
    }


def render_serving(
    job: plan.JobRef, spec: JobSpec, options: PromotionOptions, excluded_nodes: list[str] | None = None
) -> list[dict]:
    inf = spec.promotion.inference
    if inf is None:
        raise ValueError("render_serving: spec.promotion.inference is not set (the caller checks wanted(spec))")
    port = inf.port
    mounts, volumes = _volumes(job, spec)
    command = list(options.serve_command) + [
        "--checkpoint",
        served_checkpoint(job, spec),
        "--config",
        contract.CONFIG_PATH,
        "--port",
        str(port),
    ]
    if not inf.fp8:
        command.append("--no-fp8")
    probe = lambda path, period: {"httpGet": {"path": path, "port": port}, "periodSeconds": period}  # noqa: E731
    container = {
        "name": SERVE_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": command,
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": probe("/readyz", 2),
        "livenessProbe": {**probe("/healthz", 10), "failureThreshold": 6},
        "volumeMounts": mounts,
        "resources": _resources(spec),
    }
    labels = _labels(job.name, LABEL_ROLE_SERVE)
    selector = {LABEL_PROMOTED_FROM: labels[LABEL_PROMOTED_FROM], plan.LABEL_ROLE: LABEL_ROLE_SERVE}
    meta = {"namespace": job.namespace, "labels": labels, "ownerReferences": [plan.owner_reference(job)]}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": serve_name(job.name), **meta},
        "spec": {
            "replicas": inf.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": plan.pod_skeleton(spec, [container], volumes, "Always", excluded_nodes),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": serve_name(job.name), **meta},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": port}]},
    }
    return [deployment, service]


def distill_phase(observed: dict | None) -> tuple[str, str]:
    """(phase, message) of the distillation Job."""
    return batch_job_phase(observed, "distillation", "student written", "distilling")


def batch_job_phase(observed: dict | None, what: str, done: str, running: str) -> tuple[str, str]:
    """(phase, message) of a batch Job object."""
    if observed is None:
        return PENDING, f"{what} job not created yet"
    st = observed.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return SUCCEEDED, done
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return FAILED, c.get("message") or c.get("reason") or f"{what} failed"
    if st.get("succeeded"):
        return SUCCEEDED, done
    return RUNNING, running


def serving_phase(observed: dict | None, replicas: int) -> tuple[str, str]:
    if observed is None:
        return PENDING, "deployment not created yet"
    ready = int((observed.get("status") or {}).get("readyReplicas") or 0)
    if ready >= max(1, replicas) or replicas == 0:
        return READY, f"{ready}/{replicas} replicas ready"
    return PROGRESSING, f"{ready}/{replicas} replicas ready"


def chain(promotion: Promotion) -> str:
    stages = [("training", promotion.training), ("distillation", promotion.distill), ("serving", promotion.inference)]
    return " -> ".join(f"{name}:{s.phase}" for name, s in stages if s)


def plan_promotion(
    job: plan.JobRef,
    spec: JobSpec,
    status: JobStatus,
    distill_job: dict | None,
    deployment: dict | None,
    now: str,
    options: PromotionOptions | None = None,
) -> PromotionDecision | None:
    """None when there is nothing to promote (job not Succeeded, or promotion not configured). The children keep
    off the nodes the training excluded (isolated hardware)."""
    do_distill, do_serve = wanted(spec)
    if status.phase != SUCCEEDED or not (do_distill or do_serve):
        return None
    options = options or PromotionOptions()
    excluded = list(status.excluded_nodes)
    old = status.promotion or Promotion()
    new = Promotion(
        training=PromotionStage(phase=SUCCEEDED, name=job.name, completion_time=status.completion_time or now)
    )
    d = PromotionDecision(promotion=new)
    upstream_ok = True
    distill_spec, inference_spec = spec.promotion.distill, spec.promotion.inference
    if do_distill and distill_spec is not None:
        prev = old.distill or PromotionStage()
        if prev.phase in (SUCCEEDED, FAILED):
            stage = prev.model_copy()  # terminal: recorded, whatever happened to the Job object since
        elif distill_job is None and prev == PromotionStage():
            d.create.append(render_distill_job(job, spec, options, excluded))
            stage = PromotionStage(
                phase=RUNNING,
                name=distill_job_name(job.name),
                start_time=now,
                message=f"teacher = final checkpoint, student -> {served_checkpoint(job, spec)}",
            )
            d.events.append(
                Event(
                    "Normal",
                    "DistillationStarted",
                    f"job {distill_job_name(job.name)}: {distill_spec.teacher_steps} -> "
                    f"{distill_spec.student_steps} sampling steps",
                )
            )
        else:
            phase, message = (
                distill_phase(distill_job)
                if distill_job is not None
                else (FAILED, "distillation job disappeared before it finished")
            )
            stage = prev.model_copy(
                update={
                    "phase": phase,
                    "name": distill_job_name(job.name),
                    "message": message,
                    "start_time": prev.start_time or now,
                }
            )
            if phase in (SUCCEEDED, FAILED):
                stage.completion_time = now
                d.events.append(Event("Normal" if phase == SUCCEEDED else "Warning", f"Distillation{phase}", message))
        new.distill = stage
        upstream_ok = stage.phase == SUCCEEDED
    if do_serve and inference_spec is not None:
        prev = old.inference or PromotionStage()
        replicas = inference_spec.replicas
        if not upstream_ok:
            failed = new.distill is not None and new.distill.phase == FAILED
            stage = PromotionStage(
                phase=FAILED if failed else PENDING,
                name=serve_name(job.name),
                message="distillation failed: nothing to serve" if failed else "waiting for distillation",
            )
        elif deployment is None and prev.phase not in (PROGRESSING, READY):
            d.create.extend(render_serving(job, spec, options, excluded))
            where = endpoint(job, spec, options.cluster_domain)
            stage = PromotionStage(
                phase=PROGRESSING,
                name=serve_name(job.name),
                start_time=now,
                message=f"serving {served_checkpoint(job, spec)} at {where}",
            )
            d.events.append(Event("Normal", "ServingCreated", stage.message or ""))
        else:
            phase, message = serving_phase(deployment, replicas)
            if deployment is None:
                phase, message = FAILED, "serving deployment was deleted"
            stage = prev.model_copy(
                update={
                    "phase": phase,
                    "name": serve_name(job.name),
                    "message": f"{message}; {endpoint(job, spec, options.cluster_domain)}",
                }
            )
            if phase == READY and prev.phase != READY:
                stage.completion_time = now
                d.events.append(Event("Normal", "ServingReady", stage.message or ""))
        new.inference = stage
    new.chain = chain(new)
    return d


def promotion_settled(spec: JobSpec, status: JobStatus) -> bool:
    """Nothing left for the operator to watch: every enabled stage reached Succeeded/Ready/Failed."""
    do_distill, do_serve = wanted(spec)
    if not (do_distill or do_serve):
        return True
    promotion = status.promotion or Promotion()
    if do_distill and (promotion.distill.phase if promotion.distill else None) not in (SUCCEEDED, FAILED):
        return False
    if do_serve and (promotion.inference.phase if promotion.inference else None) not in (READY, FAILED):
        return False
    return True


__all__ = [
    "PromotionDecision",
    "PromotionOptions",
    "chain",
    "distill_job_name",
    "batch_job_phase",
    "distill_phase",
    "endpoint",
    "plan_promotion",
    "promotion_settled",
    "render_batch_job",
    "render_distill_job",
    "render_serving",
    "serve_name",
    "served_checkpoint",
    "serving_phase",
    "wanted",
]
