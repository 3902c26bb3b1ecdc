"""The children of one attempt of a job, as plain Kubernetes objects: pure functions, no API calls.

Names are deterministic (job, attempt, node rank) so that creating them is idempotent: an operator restarted
mid-launch re-creates only what is missing, and AlreadyExists means "done".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import yaml

from omnitrain import contract, gang, gang_watch, k8s_names
from omnitrain.operator import crd
from omnitrain.spec import JobSpec, RunInfo, TrainerConfig

LABEL_JOB = "omnitrain.io/job-name"  # also what the PodMonitor selects (docs/contracts.md, Observability)
LABEL_ATTEMPT = "omnitrain.io/attempt"
LABEL_NODE_RANK = "omnitrain.io/node-rank"
LABEL_ROLE = "omnitrain.io/role"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
# Kueue's plain pod groups: the pods of one group are admitted together (all or none) when its total count exists.
LABEL_POD_GROUP = "kueue.x-k8s.io/pod-group-name"
ANNOTATION_POD_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
# "false": the group is finished once none of its pods runs (Kueue then drops its pods' finalizers and the quota);
# without it Kueue keeps a failed or preempted group's pods for replacements that never come (the next attempt is
# a group of its own) and requeues the Workload, so the old gang never goes and holds quota.
ANNOTATION_RETRIABLE_IN_GROUP = "kueue.x-k8s.io/retriable-in-group"
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


def gang_config_map_name(job: str) -> str:
    return fit_name(job, "-gang")


def pod_name(job: str, attempt: int, rank: int) -> str:
    return fit_name(job, f"-a{attempt}-n{rank}")


def pod_hostname(rank: int) -> str:
    return f"n{rank}"


def spare_name(job: str, index: int) -> str:
    """Hot spare number `index` of the job (numbered over the job's life: a name is never used twice)."""
    return fit_name(job, f"-s{index}")


def hostname_of(name: str) -> str:
    """The hostname a pod of the job was created with: `n<rank>` for a rank's pod, `s<index>` for a spare (a spare
    keeps it when it becomes a rank, so the rendezvous address follows the pod, not the rank)."""
    head, sep, tail = name.rpartition("-")
    return tail if sep and tail[:1] in ("n", "s") and tail[1:].isdigit() else pod_hostname(0)


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


def master_addr(job: JobRef, domain: str = CLUSTER_DOMAIN, hostname: str | None = None) -> str:
    """Rank 0's DNS name under the headless Service (`hostname`: its pod's, when not the first gang's rank 0)."""
    return f"{hostname or pod_hostname(0)}.{service_name(job.name)}.{job.namespace}.svc.{domain}"


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


def in_place(spec: JobSpec) -> bool:
    return spec.resilience.restart_mode == "InPlace"


# What an in-place pod's supervisor sets per generation (omnitrain.gang): not part of the pod's fixed env or command.
_PER_GENERATION_ENV = ("PET_NODE_RANK", "MASTER_ADDR", "MASTER_PORT", contract.ENV_ATTEMPT)
_PER_GENERATION_FLAGS = ("--nnodes", "--node-rank", "--master-addr", "--master-port")


def in_place_command(command: list[str]) -> list[str]:
    """The pod command of an in-place gang: torchrun's rank and rendezvous flags removed (its supervisor passes
    them as PET_* variables, which torchrun reads, for the generation it starts)."""
    out: list[str] = []
    skip_value = False
    for arg in command:
        if skip_value:
            skip_value = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in _PER_GENERATION_FLAGS:
            skip_value = "=" not in arg
            continue
        out.append(arg)
    return out


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
    if in_place(spec):
        for name in _PER_GENERATION_ENV:
            plain.pop(name)
        plain[gang.ENV_GANG_FILE] = f"{gang.GANG_MOUNT}/{gang.GANG_FILE}"
        plain[gang.ENV_STATE_DIR] = gang.STATE_MOUNT
        plain[gang_watch.ENV_GANG_CONFIGMAP] = gang_config_map_name(job.name)
        plain[gang_watch.ENV_GANG_TOKEN_FILE] = f"{gang_watch.API_MOUNT}/{gang_watch.TOKEN_FILE}"
        plain[gang_watch.ENV_GANG_CA_FILE] = f"{gang_watch.API_MOUNT}/{gang_watch.CA_FILE}"
    env: list[dict] = [{"name": k, "value": v} for k, v in plain.items()]
    env.append({"name": contract.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    env.append({"name": contract.ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    if in_place(spec):
        env.append({"name": gang.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        env.append(
            {"name": gang_watch.ENV_POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        )
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
    and volumes given, spec.scheduling (nodeSelector, tolerations, priorityClassName, schedulerName,
    terminationGracePeriodSeconds) and the affinity given plus the node exclusions. No ServiceAccount token: the
    trainer, distiller and inference server never call the API, and a token in a pod running the user's image would
    be the namespace's credentials."""
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
    pod["terminationGracePeriodSeconds"] = sched.termination_grace_period_seconds
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


def pod_group_name(job: str, attempt: int) -> str:
    """Kueue's pod group (and Workload) of an attempt: `<job>-a<attempt>` (a label value: 63 characters at most)."""
    return fit_name(job, f"-a{attempt}")


def render_pod(
    job: JobRef,
    spec: JobSpec,
    attempt: int,
    rank: int,
    excluded_nodes: list[str],
    options: PlanOptions,
    name: str | None = None,
    spare: bool = False,
) -> dict:
    """The pod of node rank `rank`, created in attempt (generation) `attempt`; `name` when a member list gives it.
    A spare (in place) has no rank until an announcement gives it one: no rank label, hostname from its name."""
    sched = spec.scheduling
    labels = pod_labels(job.name, attempt, rank)
    if spare:
        del labels[LABEL_NODE_RANK]
        labels[LABEL_ROLE] = "spare"
    annotations = {}
    if sched.queue_name:
        labels[LABEL_QUEUE] = sched.queue_name
        # one group per attempt: a gang restart is a new admission of the same size (Kueue does not recreate pods)
        labels[LABEL_POD_GROUP] = pod_group_name(job.name, attempt)
        annotations[ANNOTATION_POD_GROUP_COUNT] = str(spec.parallelism.nodes)
        annotations[ANNOTATION_RETRIABLE_IN_GROUP] = "false"
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
        "command": in_place_command(options.command) if in_place(spec) else list(options.command),
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
    restart_policy = "Never"  # Recreate: the operator restarts the whole gang; a lone restarted rank never rejoins
    if in_place(spec):
        # The supervisor ends its container when its workers fail (exit code and message are the report); the
        # kubelet starts it again in the same pod, and it waits for the next generation (omnitrain.gang).
        restart_policy = "OnFailure"
        mounts.append({"name": gang.GANG_VOLUME, "mountPath": gang.GANG_MOUNT, "readOnly": True})
        mounts.append({"name": gang.STATE_VOLUME, "mountPath": gang.STATE_MOUNT})
        volumes.append({"name": gang.GANG_VOLUME, "configMap": {"name": gang_config_map_name(job.name)}})
        volumes.append({"name": gang.STATE_VOLUME, "emptyDir": {}})
        mounts.append({"name": gang_watch.API_VOLUME, "mountPath": gang_watch.API_MOUNT, "readOnly": True})
        volumes.append(gang_api_volume())
    pod_spec = pod_skeleton(spec, [container], volumes, restart_policy, excluded_nodes, _affinity(job.name))
    if in_place(spec):
        pod_spec["serviceAccountName"] = gang_reader_name(job.name)  # its token: the projected volume only
    pod_spec["hostname"] = hostname_of(name) if name else pod_hostname(rank)
    pod_spec["subdomain"] = service_name(job.name)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name or pod_name(job.name, attempt, rank),
            "namespace": job.namespace,
            "labels": labels,
            **({"annotations": annotations} if annotations else {}),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def announcement(
    job: JobRef,
    spec: JobSpec,
    attempt: int,
    members: list[str],
    now: str = "",
    options: PlanOptions | None = None,
    spares: list[str] | None = None,
    promoted: list[str] | None = None,
) -> gang.GangAnnouncement:
    """Generation `attempt` of an in-place gang: `members` are the pod names by node rank."""
    options = options or PlanOptions()
    return gang.GangAnnouncement(
        generation=attempt,
        members={name: rank for rank, name in enumerate(members)},
        spares=list(spares or []),
        promoted=list(promoted or []),
        master_addr=master_addr(job, options.cluster_domain, hostname_of(members[0])),
        master_port=gang.rendezvous_port(master_port(job.uid, spec.metrics_port), attempt, avoid=spec.metrics_port),
        nnodes=spec.parallelism.nodes,
        announced=now,
    )


GANG_TOKEN_SECONDS = 3600  # the projected token's lifetime; the kubelet rotates it at 80%
ROOT_CA_CONFIG_MAP = "kube-root-ca.crt"  # published in every namespace by kube-controller-manager


def gang_reader_name(job: str) -> str:
    """The ServiceAccount, Role and RoleBinding that let an in-place job's supervisors read `<job>-gang`."""
    return gang_config_map_name(job)


def _child_meta(job: JobRef, name: str) -> dict:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": job_labels(job.name),
        "ownerReferences": [owner_reference(job)],
    }


def render_gang_readers(job: JobRef) -> list[dict]:
    """What an in-place job's pods need to watch their announcement through the API (omnitrain.gang_watch): a
    ServiceAccount of their own, a Role allowing only get/list/watch of the one ConfigMap `<job>-gang` (a list or
    watch is authorized by `resourceNames` when it selects that name with fieldSelector=metadata.name=...), and
    the binding. The pods' token can read nothing else (not even the job's trainer config)."""
    name = gang_reader_name(job.name)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _child_meta(job, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _child_meta(job, name),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [gang_config_map_name(job.name)],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _child_meta(job, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.namespace}],
        },
    ]


def gang_api_volume() -> dict:
    """The projected volume the supervisor reads the API with: a short-lived token of the pod's ServiceAccount
    (bound to the pod) and the cluster CA. Mounted instead of the automatic token (automountServiceAccountToken
    stays false): only here, read-only, and useless beyond the job's announcement."""
    return {
        "name": gang_watch.API_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": gang_watch.TOKEN_FILE, "expirationSeconds": GANG_TOKEN_SECONDS}},
                {
                    "configMap": {
                        "name": ROOT_CA_CONFIG_MAP,
                        "items": [{"key": "ca.crt", "path": gang_watch.CA_FILE}],
                    }
                },
            ],
        },
    }


def render_gang_config_map(job: JobRef, announced: gang.GangAnnouncement) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": gang_config_map_name(job.name),
            "namespace": job.namespace,
            "labels": job_labels(job.name),
            "ownerReferences": [owner_reference(job)],
        },
        "data": {gang.GANG_FILE: announced.to_json()},
    }


def members_of(job: str, attempt: int, nodes: int, members: list[str] | None) -> list[str]:
    """The pod names by node rank: `members` when it lists every rank, else attempt `attempt`'s own names."""
    if members is not None and len(members) == nodes:
        return list(members)
    return [pod_name(job, attempt, rank) for rank in range(nodes)]


def plan_children(
    job: JobRef,
    spec: JobSpec,
    attempt: int,
    excluded_nodes: list[str] | None = None,
    options: PlanOptions | None = None,
    members: list[str] | None = None,
    now: str = "",
    spares: list[str] | None = None,
    promoted: list[str] | None = None,
    only_pods: set[str] | None = None,
    gang_readers: bool | None = None,
) -> list[dict]:
    """Everything one attempt needs, in creation order: ConfigMap, Service, (in place: the gang readers'
    ServiceAccount, Role and RoleBinding when `gang_readers` (default: when every pod is rendered), and the gang
    announcement,) then the
    pods by rank. `members`: the pod names by rank (in place, a pod keeps its name across generations and is
    created with the attempt it joined in); absent, attempt `attempt`'s own names. `only_pods`: render just these
    pods (an in-place restart replaces one pod of 1,024: rendering the others would make the pass O(job))."""
    options = options or PlanOptions()
    excluded = list(excluded_nodes or [])
    names = members_of(job.name, attempt, spec.parallelism.nodes, members)
    children = [render_config_map(job, spec, attempt), render_service(job, spec)]
    if in_place(spec):
        # once per job (status.children.gangReaders says they exist): an in-place restart makes no calls for them
        if gang_readers if gang_readers is not None else only_pods is None:
            children += render_gang_readers(job)
        announced = announcement(job, spec, attempt, names, now, options, spares, promoted)
        children.append(render_gang_config_map(job, announced))
    wanted = (lambda name: True) if only_pods is None else only_pods.__contains__
    children += [
        render_pod(job, spec, created_in(name, attempt), rank, excluded, options, name)
        for rank, name in enumerate(names)
        if wanted(name)
    ]
    member_names = set(names)
    children += [
        render_pod(job, spec, attempt, -1, excluded, options, name, spare=True)
        for name in (spares or [])
        if name not in member_names and wanted(name)
    ]
    return children


def created_in(name: str, default: int) -> int:
    """The attempt a pod name says it was created in (`<job>-a<N>-n<rank>`), else `default`."""
    head, _, _ = name.rpartition("-n")
    _, _, number = head.rpartition("-a")
    return int(number) if number.isdigit() else default
