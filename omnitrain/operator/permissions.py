"""Every API permission the operator uses, in one table: manifests/rbac/cluster-role.yaml grants exactly these
(tests/operator/test_rbac.py), and docs/operator.md ("Permissions") says which could be a namespaced Role.

The operator creates pods that run users' images, so it holds no verb it does not call: no `*`, no update where a
patch is what it sends, reads of children only to learn whose an object in the way is (a create answers
AlreadyExists by itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain import contract


@dataclass(frozen=True)
class Permission:
    group: str  # API group ("" = core)
    resource: str  # plural, with /subresource
    verbs: tuple[str, ...]
    namespaced: bool  # False: cluster-scoped, a ClusterRole even in a namespaced install
    used_by: str  # who calls it, and why


OPERATOR_PERMISSIONS: tuple[Permission, ...] = (
    Permission(
        contract.GROUP,
        contract.PLURAL,
        ("list", "watch", "get", "patch"),
        True,
        "kopf watches the jobs and patches its annotations (progress, diff base); Kube.get_job, list_jobs (resync)",
    ),
    Permission(contract.GROUP, f"{contract.PLURAL}/status", ("patch",), True, "Kube.patch_status (merge patch)"),
    Permission(
        "",
        "pods",
        ("get", "list", "watch", "create", "delete"),
        True,
        "kopf pod events; Kube.list_pods, create, delete; get: the owner of a pod in the way (409)",
    ),
    Permission(
        "",
        "services",
        ("get", "create", "delete"),
        True,
        "the headless rendezvous Service, promotion's inference Service; get: owner on 409; delete: undo a launch",
    ),
    Permission(
        "",
        "configmaps",
        ("get", "list", "watch", "create", "patch", "delete"),
        True,
        "the trainer config (its attempt number patched when it is the job's own); get: owner on 409; delete: undo; "
        "list, watch: only held because the gang readers' Role grants them (RBAC escalation rule)",
    ),
    Permission(
        "",
        "serviceaccounts",
        ("get", "create", "delete"),
        True,
        "in place: the gang readers' ServiceAccount (<job>-gang); get: owner on 409; delete: undo",
    ),
    Permission(
        "rbac.authorization.k8s.io",
        "roles",
        ("get", "create", "delete"),
        True,
        "in place: the Role reading only <job>-gang; get: owner on 409; delete: undo",
    ),
    Permission(
        "rbac.authorization.k8s.io",
        "rolebindings",
        ("get", "create", "delete"),
        True,
        "in place: binds that Role to the gang readers' ServiceAccount; get: owner on 409; delete: undo",
    ),
    Permission("", "events", ("create",), True, "Kube.post_event and kopf's own events (core v1)"),
    Permission(
        "batch",
        "jobs",
        ("get", "create"),
        True,
        "read and create the distillation Job (promotion) and the pre-encoding Job (data.preEncode)",
    ),
    Permission(
        "kueue.x-k8s.io",
        "workloads",
        ("get",),
        True,
        "with scheduling.queueName: Kube.admission_message reads why Kueue has not admitted an attempt's pod group",
    ),
    Permission("apps", "deployments", ("get", "create"), True, "promotion: read and create the inference Deployment"),
    Permission("", "nodes", ("get", "list", "watch", "patch"), False, "node watch and reads (lost nodes); isolation"),
    Permission(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        False,
        "kopf's resource scanning (a CRD that comes or goes)",
    ),
    Permission("", "namespaces", ("list", "watch"), False, "kopf's namespace scanning (namespaced mode)"),
    Permission(
        "coordination.k8s.io",
        "leases",
        ("get", "create", "update"),
        True,
        "leader election, only with OMNITRAIN_LEADER_ELECTION: LeaseClient reads, creates and replaces (compare "
        "and swap on resourceVersion) the Lease in the operator's namespace",
    ),
    Permission(
        "kopf.dev",
        "clusterkopfpeerings",
        ("get", "list", "watch", "patch"),
        False,
        "kopf peering, only with OMNITRAIN_PEERING (several replicas, cluster-wide)",
    ),
    Permission(
        "kopf.dev",
        "kopfpeerings",
        ("get", "list", "watch", "patch"),
        True,
        "kopf peering, only with OMNITRAIN_PEERING (several replicas, OMNITRAIN_NAMESPACES set)",
    ),
)


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs, from RBAC rules as in a (Cluster)Role."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                out.setdefault((group, resource), set()).update(rule.get("verbs") or [])
    return out


def needed() -> dict[tuple[str, str], set[str]]:
    return {(p.group, p.resource): set(p.verbs) for p in OPERATOR_PERMISSIONS}
