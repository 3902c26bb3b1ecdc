"""The operator's RBAC against what it calls (issue 14, case 5): manifests/rbac/cluster-role.yaml grants exactly the
table omnitrain/operator/permissions.py, no `*` and no verb the code does not use. The end-to-end check that the
table is enough is tests/operator/test_operator_local_cluster.py, whose operator runs as that ServiceAccount."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from omnitrain.operator.permissions import OPERATOR_PERMISSIONS, grants, needed

REPO = Path(__file__).resolve().parents[2]
ROLE = yaml.safe_load((REPO / "manifests" / "rbac" / "cluster-role.yaml").read_text())


def test_the_cluster_role_grants_exactly_the_permissions_the_operator_uses():
    granted = grants(ROLE["rules"])
    assert all("*" not in verbs for verbs in granted.values()) and ("*", "*") not in granted
    assert all("*" not in (rule.get("apiGroups") or []) + (rule.get("resources") or []) for rule in ROLE["rules"])
    assert granted == needed()


def test_the_table_names_each_resource_once_with_known_verbs():
    keys = [(p.group, p.resource) for p in OPERATOR_PERMISSIONS]
    assert len(keys) == len(set(keys))
    known = {"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"}
    assert all(set(p.verbs) <= known and p.used_by for p in OPERATOR_PERMISSIONS)


# The client methods the operator's modules name, by verb and resource (kubernetes-client method names; matched
# as attributes, since some are read through a dict of creators rather than called in place).
_CALL = re.compile(r"\.(read|list|create|patch|replace|delete)_(namespaced_|cluster_)?([a-z_]+?)(_status)?\b")
_RESOURCES = {
    "pod": ("", "pods"),
    "service": ("", "services"),
    "config_map": ("", "configmaps"),
    "event": ("", "events"),
    "node": ("", "nodes"),
    "job": ("batch", "jobs"),
    "deployment": ("apps", "deployments"),
    "custom_object": ("omnitrain.io", "omnitrainingjobs"),
    "service_account": ("", "serviceaccounts"),
    "role": ("rbac.authorization.k8s.io", "roles"),
    "role_binding": ("rbac.authorization.k8s.io", "rolebindings"),
    "lease": ("coordination.k8s.io", "leases"),
}
_VERBS = {"read": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update", "delete": "delete"}


def test_every_client_call_in_the_operator_is_in_the_table():
    wanted = needed()
    seen = []
    for path in sorted((REPO / "omnitrain" / "operator").glob("*.py")):
        text = path.read_text()
        for verb, _, kind, status in _CALL.findall(text):
            if kind not in _RESOURCES:
                continue
            group, resource = _RESOURCES[kind]
            resource += "/status" if status else ""
            seen.append((path.name, group, resource, _VERBS[verb]))
    assert len(seen) >= 12  # the scan sees the calls (a renamed client would make this test vacuous)
    missing = [s for s in seen if s[3] not in wanted.get((s[1], s[2]), set())]
    assert missing == []
