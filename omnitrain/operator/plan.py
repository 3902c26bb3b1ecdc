"""The children of one attempt of a job, as plain Kubernetes objects: pure functions, no API calls.

Names are deterministic (job, attempt, node rank) so that creating them is idempotent: an operator restarted
mid-launch re-creates only what is missing, and AlreadyExists means "done".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import yaml

from omnitrain import contract, k8s_names
from omnitrain.operator import crd
from omnitrain.spec import JobSpec, RunInfo, TrainerConfig

LABEL_JOB = "omnitrain.io/job-name"  # also what the PodMonitor selects (docs/contracts.md, Observability)
LABEL_ATTEMPT = "omnitrain.io/attempt"
LABEL_NODE_RANK = "omnitrain.io/node-rank"
LABEL_ROLE = "omnitrain.io/role"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_HOSTNAME = "kubernetes.io/hostname"
RACK_LABEL = "topology.kubernetes.io/rack"
MAIN_CONTAINER = "trainer"
CONFIG_VOLUME, LOCAL_VOLUME, PERSISTENT_VOLUME = "config", "local-checkpoints", "checkpoints"
MASTER_PORT_BASE, MASTER_PORT_SPAN = 20000, 20000
CLUSTER_DOMAIN = "cluster.local"
MAX_NAME = k8s_names.MAX_LABEL  # the Service name is a DNS label; label values have the same bound

# torchrun with one process per GPU; the rendezvous runs on rank 0 behind the headless Service (docs/contracts.md).
DEFAULT_TRAIN_COMMAND = [
    "torchrun",
    "--nnodes=$(PET_NNODES)",
    "--node-rank=$(PET_NODE_RANK)",
    "--nproc-per-node=$(PET_NPROC_PER_NODE)",
    "--master-addr=$(MASTER_ADDR)",
    "--master-port=$(MASTER_PORT)",
    "-m",
    "omnitrain",
    "train",
    "--config",
    contract.CONFIG_PATH,
]


@dataclass(frozen=True)
class JobRef:
    """The job a child belongs to (for names and ownerReferences)."""

    name: str
    namespace: str
    uid: str
    created: str = ""  # metadata.creationTimestamp: the trainer's goodput counts wall time from here


@dataclass(frozen=True)
class PlanOptions:
    """Operator settings that shape the children (not part of the user's spec)."""

    command: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_COMMAND))
    image_pull_policy: str = "IfNotPresent"
    cluster_domain: str = CLUSTER_DOMAIN
    extra_env: dict[str, str] = field(default_factory=dict)


def service_name(job: str) -> str:
    # The Service name is a DNS label (<= 63); the pods' hostnames are separate labels under it.
    return fit_name(job, "")


def config_map_name(job: str) -> str:
    return fit_name(job, "-config")


def pod_name(job: str, attempt: int, rank: int) -> str:
    return fit_name(job, f"-a{attempt}-n{rank}")


def pod_hostname(rank: int) -> str:
    return f"n{rank}"


def fit_name(job: str, suffix: str) -> str:
    """job + suffix within 63 characters; long job names are cut and keep a hash so they stay unique."""
    name = job + suffix
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(job.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 1
    return f"{job[:keep].rstrip('-.')}-{digest}{suffix}"


def job_name_problems(job: str) -> list[str]:
    """What the API would refuse of the names derived from the job's: its Service (and the pods' subdomain) must
    be a DNS-1035 label, which a job name (a DNS-1123 subdomain) need not be (a dot, a leading digit)."""
    problem = k8s_names.dns1035_label_problem(service_name(job))
    if problem is None:
        return []
    return [
        f"metadata.name: {job!r} names the job's Service (its pods' DNS subdomain), and {service_name(job)!r} "
        f"{problem} (rename the job, e.g. {_dns1035_like(job)!r})"
    ]


def _dns1035_like(job: str) -> str:
    """A name close to `job` that is a DNS-1035 label (for the fix in a message)."""
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in job.lower()).strip("-")
    return fit_name(name if name[:1].isalpha() else f"job-{name}", "")


def master_port(uid: str, avoid: int | None = None) -> int:
    """A port derived from the job uid: two jobs whose rank-0 pods share a machine (hostNetwork, local agent) differ.
    `avoid` (the spec's metricsPort) is never the answer: the Service would carry one port twice, which the API
    refuses, and the user cannot see the uid to choose around it."""
    digest = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
    port = MASTER_PORT_BASE + digest % MASTER_PORT_SPAN
    if port == avoid:
        port = MASTER_PORT_BASE + (digest + 1) % MASTER_PORT_SPAN
    return port


def master_addr(job: JobRef, domain: str = CLUSTER_DOMAIN) -> str:
    return f"{pod_hostname(0)}.{service_name(job.name)}.{job.namespace}.svc.{domain}"


def owner_reference(job: JobRef) -> dict:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def label_value(value: str) -> str:
    """A job name as a label value (<= 63 characters; long names cut the way fit_name cuts them). A job name may be
    253 characters, a label value only 63: every label the operator writes and every selector it reads by goes
    through here (idempotent: a value that fits is itself)."""
    return value if len(value) <= MAX_NAME else fit_name(value, "")


def job_labels(job: str) -> dict[str, str]:
    value = label_value(job)
    return {LABEL_JOB: value, "app.kubernetes.io/name": "omnitrain", "app.kubernetes.io/instance": value}


def job_selector(job: str) -> str:
    """The label selector of a job's training pods (list calls, watches)."""
    return f"{LABEL_JOB}={label_value(job)}"


def pod_labels(job: str, attempt: int, rank: int) -> dict[str, str]:
    return {
        **job_labels(job),
        LABEL_ATTEMPT: str(attempt),
        LABEL_NODE_RANK: str(rank),
        LABEL_ROLE: "trainer",
    }


def checkpoint_root(spec: JobSpec, job: str) -> str:
    """Where the job's checkpoints live as the pods see it (docs/checkpointing.md): status.lastCheckpoint.path."""
    return spec.checkpoint.job_root(job)


def render_config_map(job: JobRef, spec: JobSpec, attempt: int) -> dict:
    config = TrainerConfig(
        spec=spec,
        run=RunInfo(
            job_name=job.name, namespace=job.namespace, job_uid=job.uid, attempt=attempt, job_created=job.created
        ),
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(job.name),
            "namespace": job.namespace,
            "labels": job_labels(job.name),
            "ownerReferences": [owner_reference(job)],
        },
        "data": {contract.CONFIG_FILE: yaml.safe_dump(config.to_wire(), sort_keys=False)},
    }


def render_service(job: JobRef, spec: JobSpec) -> dict:
    rendezvous = master_port(job.uid, spec.metrics_port)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job.name),
            "namespace": job.namespace,
            "labels": job_labels(job.name),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve rank 0 before it is Ready: torchrun's rendezvous is what makes it ready.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: label_value(job.name)},
            "ports": [
                {"name": "rendezvous", "port": rendezvous, "targetPort": rendezvous},
                {"name": "metrics", "port": spec.metrics_port, "targetPort": spec.metrics_port},
            ],
        },
    }


def _env(job: JobRef, spec: JobSpec, attempt: int, rank: int, options: PlanOptions) -> list[dict]:
    p = spec.parallelism
    plain = {
        "PET_NNODES": str(p.nodes),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": str(p.gpus_per_node),
        "MASTER_ADDR": master_addr(job, options.cluster_domain),
        "MASTER_PORT": str(master_port(job.uid, spec.metrics_port)),
        "WORLD_SIZE": str(p.world_size),
        contract.ENV_JOB_NAME: job.name,
        contract.ENV_ATTEMPT: str(attempt),
        contract.ENV_METRICS_PORT: str(spec.metrics_port),
        contract.TERMINATION_LOG_ENV: contract.DEFAULT_TERMINATION_LOG,
        **options.extra_env,
    }
    env: list[dict] = [{"name": k, "value": v} for k, v in plain.items()]
    env.append({"name": contract.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    env.append({"name": contract.ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    return env


def excluded_nodes_affinity(excluded_nodes: list[str]) -> dict:
    """Node affinity that keeps a pod off the excluded (isolated) nodes; {} when there are none."""
    if not excluded_nodes:
        return {}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": LABEL_HOSTNAME, "operator": "NotIn", "values": sorted(set(excluded_nodes))}
                        ]
                    }
                ]
            }
        }
    }


def pod_skeleton(
    spec: JobSpec,
    containers: list[dict],
    volumes: list[dict],
    restart_policy: str,
    excluded_nodes: list[str] | None = None,
    affinity: dict | None = None,
) -> dict:
    """The pod spec every pod of a job starts from (training gang and promotion children alike): the containers
    and volumes given, spec.scheduling (nodeSelector, tolerations, priorityClassName, schedulerName) and the
    affinity given plus the node exclusions. No ServiceAccount token: the trainer, distiller and inference server
    never call the API, and a token in a pod running the user's image would be the namespace's credentials."""
    sched = spec.scheduling
    pod: dict = {
        "restartPolicy": restart_policy,
        "containers": containers,
        "volumes": volumes,
        "automountServiceAccountToken": False,
    }
    merged = {**(affinity or {}), **excluded_nodes_affinity(list(excluded_nodes or []))}
    if merged:
        pod["affinity"] = merged
    if sched.node_selector:
        pod["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod["tolerations"] = [t.to_wire() for t in sched.tolerations]
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    if sched.scheduler_name:
        pod["schedulerName"] = sched.scheduler_name
    return pod


def _affinity(job: str) -> dict:
    affinity: dict = {
        # One pod per node: the gang is one process group per machine.
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {LABEL_JOB: label_value(job)}}, "topologyKey": LABEL_HOSTNAME}
            ]
        },
        # Ranks close together (same rack) when the cluster has rack labels; a preference, never a blocker.
        "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {LABEL_JOB: label_value(job)}},
                        "topologyKey": RACK_LABEL,
                    },
                }
            ]
        },
    }
    return affinity


def render_pod(
    job: JobRef, spec: JobSpec, attempt: int, rank: int, excluded_nodes: list[str], options: PlanOptions
) -> dict:
    sched = spec.scheduling
    labels = pod_labels(job.name, attempt, rank)
    if sched.queue_name:
        labels[LABEL_QUEUE] = sched.queue_name
    limits = {sched.gpu_resource: str(spec.parallelism.gpus_per_node)}
    requests = dict(limits)
    if spec.resources.cpu:
        requests["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        requests["memory"] = limits["memory"] = spec.resources.memory
    mounts = [
        {"name": CONFIG_VOLUME, "mountPath": contract.CONFIG_MOUNT, "readOnly": True},
        {"name": LOCAL_VOLUME, "mountPath": spec.checkpoint.local_path},
    ]
    volumes = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(job.name)}},
        {"name": LOCAL_VOLUME, "hostPath": {"path": spec.checkpoint.local_path, "type": "DirectoryOrCreate"}},
    ]
    if spec.checkpoint.persistent_claim:
        mounts.append({"name": PERSISTENT_VOLUME, "mountPath": spec.checkpoint.persistent_path})
        volumes.append(
            {"name": PERSISTENT_VOLUME, "persistentVolumeClaim": {"claimName": spec.checkpoint.persistent_claim}}
        )
    container = {
        "name": MAIN_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": list(options.command),
        "env": _env(job, spec, attempt, rank, options),
        "ports": [
            {"name": "metrics", "containerPort": spec.metrics_port},
            {"name": "rendezvous", "containerPort": master_port(job.uid, spec.metrics_port)},
        ],
        "resources": {"limits": limits, "requests": requests},
        "volumeMounts": mounts,
        "terminationMessagePath": contract.DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # restartPolicy Never: the operator restarts the whole gang; a lone restarted rank never rejoins
    pod_spec = pod_skeleton(spec, [container], volumes, "Never", excluded_nodes, _affinity(job.name))
    pod_spec["hostname"], pod_spec["subdomain"] = pod_hostname(rank), service_name(job.name)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job.name, attempt, rank),
            "namespace": job.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def plan_children(
    job: JobRef,
    spec: JobSpec,
    attempt: int,
    excluded_nodes: list[str] | None = None,
    options: PlanOptions | None = None,
) -> list[dict]:
    """Everything one attempt needs, in creation order: ConfigMap, Service, then the pods by rank."""
    options = options or PlanOptions()
    excluded = list(excluded_nodes or [])
    children = [render_config_map(job, spec, attempt), render_service(job, spec)]
    children += [render_pod(job, spec, attempt, rank, excluded, options) for rank in range(spec.parallelism.nodes)]
    return children
