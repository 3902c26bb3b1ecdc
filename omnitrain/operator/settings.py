"""Operator settings from the environment (the Deployment sets them; tests override the pod command)."""

from __future__ import annotations

import ipaddress
import os
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from omnitrain.operator.leader_lease import LeaseTerms
from omnitrain.operator.plan import DEFAULT_TRAIN_COMMAND, PlanOptions
from omnitrain.spec import ALLOWED_HOST_ROOTS_ENV, DEFAULT_ALLOWED_HOST_ROOTS, path_problem


@dataclass(frozen=True)
class WebhookSettings:
    """The validating admission webhook the operator serves (omnitrain.operator.admission_review), over TLS with
    the certificate in `cert_dir` (tls.crt, tls.key, and ca.crt: the bundle the API server trusts). In a cluster the
    ValidatingWebhookConfiguration of manifests/operator points at the operator's Service, and cert-manager (or the
    user) fills the Secret mounted there; with `configuration` set, kopf itself keeps a configuration of that name
    pointing at https://<host>:<port> (the local cluster: the API server reaches the operator on loopback)."""

    port: int
    cert_dir: str
    address: str = "0.0.0.0"
    host: str | None = None  # the name in the URL kopf writes (managed configuration only)
    configuration: str | None = None  # ValidatingWebhookConfiguration kopf creates and keeps; None: pre-created

    @classmethod
    def from_env(cls, e: Mapping[str, str]) -> WebhookSettings | None:
        port = int(e.get("OMNITRAIN_WEBHOOK_PORT", "0") or 0)
        if not port:
            return None
        cert_dir = e.get("OMNITRAIN_WEBHOOK_CERT_DIR", "")
        if not cert_dir:
            raise ValueError(
                "OMNITRAIN_WEBHOOK_CERT_DIR: the webhook (OMNITRAIN_WEBHOOK_PORT) needs a folder with tls.crt, "
                "tls.key and ca.crt (the manifests mount the Secret omnitrain-webhook-tls there)"
            )
        return cls(
            port=port,
            cert_dir=cert_dir,
            address=parse_listen_address(e.get("OMNITRAIN_WEBHOOK_ADDRESS", "0.0.0.0"), "OMNITRAIN_WEBHOOK_ADDRESS"),
            host=e.get("OMNITRAIN_WEBHOOK_HOST") or None,
            configuration=e.get("OMNITRAIN_WEBHOOK_CONFIGURATION") or None,
        )


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def leader_election_terms(e: Mapping[str, str]) -> LeaseTerms | None:
    """OMNITRAIN_LEADER_ELECTION=<lease name>: several replicas, the Lease's holder acts (omnitrain.operator.leader).
    The Lease lives in OMNITRAIN_LEADER_ELECTION_NAMESPACE, else the pod's own namespace; this replica is
    OMNITRAIN_LEADER_ELECTION_IDENTITY, else POD_NAME (the Deployment sets it), else host and pid."""
    name = e.get("OMNITRAIN_LEADER_ELECTION", "")
    if not name:
        return None
    if e.get("OMNITRAIN_PEERING"):
        raise ValueError(
            "OMNITRAIN_PEERING and OMNITRAIN_LEADER_ELECTION are both set: choose one way to run several replicas "
            "(leader election hands over when the leader dies; kopf peering freezes replicas of equal priority)"
        )
    namespace = e.get("OMNITRAIN_LEADER_ELECTION_NAMESPACE") or e.get("POD_NAMESPACE") or ""
    if not namespace and os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            namespace = f.read().strip()
    numbers = {}
    for variable, default in (
        ("OMNITRAIN_LEASE_DURATION_SECONDS", "15"),
        ("OMNITRAIN_LEASE_RENEW_DEADLINE_SECONDS", "10"),
        ("OMNITRAIN_LEASE_RETRY_SECONDS", "2"),
    ):
        try:
            numbers[variable] = float(e.get(variable) or default)
        except ValueError:
            raise ValueError(f"{variable}: {e.get(variable)!r} is not a number of seconds") from None
    terms = LeaseTerms(
        name=name,
        namespace=namespace or "default",
        identity=e.get("OMNITRAIN_LEADER_ELECTION_IDENTITY")
        or e.get("POD_NAME")
        or f"{socket.gethostname()}-{os.getpid()}",
        duration_s=max(1, round(numbers["OMNITRAIN_LEASE_DURATION_SECONDS"])),  # the Lease holds whole seconds
        renew_deadline_s=numbers["OMNITRAIN_LEASE_RENEW_DEADLINE_SECONDS"],
        retry_s=numbers["OMNITRAIN_LEASE_RETRY_SECONDS"],
    )
    for problem in terms.problems():
        raise ValueError(f"OMNITRAIN_LEASE_RETRY_SECONDS / _RENEW_DEADLINE_SECONDS / _DURATION_SECONDS: {problem}")
    return terms


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: list[str] = field(default_factory=list)  # empty = cluster-wide
    train_command: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_COMMAND))
    resync_seconds: float = 5.0  # timer: re-check every job (lost events, progress scrape)
    metrics_port: int = 0  # operator's own Prometheus port; 0 = off
    # where that port listens: loopback unless told; the Deployment (manifests/operator) sets 0.0.0.0, so that
    # Prometheus reaches it at the pod's IP
    metrics_address: str = "127.0.0.1"
    peering: str | None = None  # kopf peering; None (and no leader election) = standalone (one replica, Recreate)
    leader_election: LeaseTerms | None = None  # several replicas, the Lease's holder acts
    cluster_domain: str = "cluster.local"
    create_workers: int = 16  # concurrent pod creations per launch
    pod_env: dict[str, str] = field(default_factory=dict)  # added to every training pod (NCCL_*, thread counts)
    # where a job's checkpoint.localPath (a hostPath on the node) may be: the operator can create pods anywhere,
    # so it, not the job's author, decides which parts of a node a pod may mount
    allowed_host_roots: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_HOST_ROOTS))
    webhook: WebhookSettings | None = None  # the validating admission webhook; None = off (reconcile checks only)
    # the pre-encoding Job's command before its arguments (spec.data.preEncode; OMNITRAIN_ENCODE_COMMAND)
    encode_command: list[str] = field(default_factory=lambda: ["omnitrain", "data", "encode"])

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        e = os.environ if env is None else env
        command = e.get("OMNITRAIN_TRAIN_COMMAND")
        default = list(DEFAULT_TRAIN_COMMAND)
        if e.get("OMNITRAIN_WATCHDOG", "1") != "0":
            # the in-pod watchdog is the container's main process: it ends a hung gang with exit 42 + evidence
            from omnitrain.resilience.operator_hook import watchdog_command

            default = watchdog_command(default)
        return cls(
            namespaces=[n for n in e.get("OMNITRAIN_NAMESPACES", "").split(",") if n],
            train_command=shlex.split(command) if command else default,
            resync_seconds=float(e.get("OMNITRAIN_RESYNC_SECONDS", "5")),
            metrics_port=int(e.get("OMNITRAIN_OPERATOR_METRICS_PORT", "0")),
            metrics_address=parse_listen_address(e.get("OMNITRAIN_OPERATOR_METRICS_ADDRESS", "127.0.0.1")),
            peering=e.get("OMNITRAIN_PEERING") or None,
            leader_election=leader_election_terms(e),
            cluster_domain=e.get("OMNITRAIN_CLUSTER_DOMAIN", "cluster.local"),
            create_workers=int(e.get("OMNITRAIN_CREATE_WORKERS", "16")),
            pod_env=parse_pod_env(e.get("OMNITRAIN_POD_ENV", "")),
            allowed_host_roots=allowed_host_roots(e),
            webhook=WebhookSettings.from_env(e),
            encode_command=shlex.split(e["OMNITRAIN_ENCODE_COMMAND"])
            if e.get("OMNITRAIN_ENCODE_COMMAND")
            else ["omnitrain", "data", "encode"],
        )

    def plan_options(self) -> PlanOptions:
        return PlanOptions(
            command=list(self.train_command), cluster_domain=self.cluster_domain, extra_env=dict(self.pod_env)
        )


def parse_pod_env(text: str) -> dict[str, str]:
    """OMNITRAIN_POD_ENV: shell words NAME=VALUE, e.g. 'NCCL_IB_HCA=mlx5 OMP_NUM_THREADS=1'."""
    env = {}
    for word in shlex.split(text):
        name, sep, value = word.partition("=")
        if not sep or not name.replace("_", "").isalnum() or name[0].isdigit():
            raise ValueError(
                f"OMNITRAIN_POD_ENV: {word!r} is not NAME=VALUE; write e.g. 'OMP_NUM_THREADS=1 NCCL_DEBUG=WARN'"
            )
        env[name] = value
    return env


def parse_listen_address(text: str, variable: str = "OMNITRAIN_OPERATOR_METRICS_ADDRESS") -> str:
    """An IP address to listen on, from `variable` (the socket binds it as written)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(
            f"{variable}: {text!r} is not an IP address; write 0.0.0.0 in a pod "
            "(the metrics scrape or the API server reaches the pod's IP) or 127.0.0.1 on a machine of your own"
        ) from None


def allowed_host_roots(env: Mapping[str, str] | None = None) -> list[str]:
    """OMNITRAIN_ALLOWED_HOST_ROOTS: comma-separated folders (default DEFAULT_ALLOWED_HOST_ROOTS); each must be a
    mountable path itself (absolute, normalised, no system folder), or the operator refuses to start."""
    e = os.environ if env is None else env
    text = e.get(ALLOWED_HOST_ROOTS_ENV)
    if text is None:
        return list(DEFAULT_ALLOWED_HOST_ROOTS)
    return checked_host_roots([r.strip() for r in text.split(",") if r.strip()], ALLOWED_HOST_ROOTS_ENV)


def checked_host_roots(roots: list[str], where: str) -> list[str]:
    """`roots` when each is a mountable path itself; ValueError naming `where` they came from otherwise."""
    for root in roots:
        problem = path_problem(root)
        if problem:
            raise ValueError(f"{where}: {problem}")
    return roots
