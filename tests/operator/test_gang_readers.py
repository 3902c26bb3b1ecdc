"""An in-place job's pods read their announcement through the API (omnitrain/gang_watch.py): the ServiceAccount,
Role and RoleBinding the operator renders for them, and the pod fields that hand the supervisor a token, the CA and
the ConfigMap's name. The Role must read that one ConfigMap and nothing else, and the operator must hold all it
grants (RBAC refuses to create a Role granting more than its creator has)."""

from __future__ import annotations

from omnitrain import gang, gang_watch
from omnitrain.operator import plan
from omnitrain.operator.permissions import grants, needed
from omnitrain.operator.reconcile import parse_spec

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
IN_PLACE = {"parallelism": {"nodes": 2, "gpusPerNode": 1}, "resilience": {"restartMode": "InPlace"}}


def children(spec: dict, **kwargs) -> dict[tuple[str, str], dict]:
    planned = plan.plan_children(JOB, parse_spec(spec).spec, 0, **kwargs)
    return {(c["kind"], c["metadata"]["name"]): c for c in planned}


def test_the_role_reads_only_the_announcement_and_the_operator_holds_what_it_grants():
    got = children(IN_PLACE)
    role = got[("Role", "j-gang")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["j-gang"], "verbs": ["get", "list", "watch"]}
    ]
    held = needed()
    assert all(verbs <= held[key] for key, verbs in grants(role["rules"]).items())
    binding = got[("RoleBinding", "j-gang")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "j-gang"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "j-gang", "namespace": "ns"}]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):  # garbage-collected with the job
        meta = got[(kind, "j-gang")]["metadata"]
        assert meta["namespace"] == "ns" and meta["ownerReferences"][0]["uid"] == "uid-1"


def test_in_place_pods_get_the_token_the_ca_and_where_to_look_but_no_automatic_token():
    pod = children(IN_PLACE)[("Pod", "j-a0-n1")]["spec"]
    assert pod["serviceAccountName"] == "j-gang" and pod["automountServiceAccountToken"] is False
    volume = {v["name"]: v for v in pod["volumes"]}[gang_watch.API_VOLUME]["projected"]["sources"]
    assert volume[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
    assert volume[1] == {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
    container = pod["containers"][0]
    mount = {m["name"]: m for m in container["volumeMounts"]}[gang_watch.API_VOLUME]
    assert mount == {"name": gang_watch.API_VOLUME, "mountPath": gang_watch.API_MOUNT, "readOnly": True}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env[gang_watch.ENV_GANG_CONFIGMAP] == plan.gang_config_map_name("j")
    assert env[gang_watch.ENV_GANG_TOKEN_FILE] == f"{gang_watch.API_MOUNT}/token"
    assert env[gang_watch.ENV_GANG_CA_FILE] == f"{gang_watch.API_MOUNT}/ca.crt"
    assert env[gang_watch.ENV_POD_NAMESPACE] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # what the supervisor builds its access from, given what a kubelet adds (KUBERNETES_SERVICE_HOST/PORT)
    access, why = gang_watch.api_access_from_env(
        {
            **{k: v for k, v in env.items() if isinstance(v, str)},
            "POD_NAMESPACE": "ns",
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "KUBERNETES_SERVICE_PORT": "443",
        }
    )
    assert access is not None and access.configmap == "j-gang", why


def test_recreate_jobs_have_no_readers_and_no_service_account():
    got = children({**IN_PLACE, "resilience": {"restartMode": "Recreate"}})
    assert {kind for kind, _ in got} == {"ConfigMap", "Service", "Pod"}
    pod = got[("Pod", "j-a0-n0")]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    assert gang_watch.API_VOLUME not in {v["name"] for v in pod["volumes"]}


def test_an_in_place_restart_does_not_render_the_readers_again():
    # they exist since the first launch; creating them again would be calls on the recovery's path
    got = children(IN_PLACE, members=["j-a0-n0", "j-a1-n1"], only_pods={"j-a1-n1"})
    assert {kind for kind, _ in got} == {"ConfigMap", "Service", "Pod"}
    assert ("ConfigMap", plan.gang_config_map_name("j")) in got and gang.GANG_VOLUME


class RecordingKube:
    """The Controller's calls over one in-place job; `apply` records what each pass creates."""

    def __init__(self, status: dict | None = None) -> None:
        meta = {"name": "j", "namespace": "ns", "uid": "uid-1", "generation": 1, "creationTimestamp": "t"}
        self.job: dict = {"metadata": meta, "spec": IN_PLACE, "status": status or {}}
        self.created: list[list[str]] = []

    def get_job(self, namespace, name):
        import copy

        return copy.deepcopy(self.job)

    def list_pods(self, namespace, name):
        return []

    def nodes(self, names):
        return {}

    def apply(self, job, decision, children):
        self.created.append(sorted({c["kind"] for c in children or []}))
        self.job["status"] = decision.status.to_wire()

    def post_event(self, job, event):
        pass


def test_the_launch_pass_creates_the_readers_once_and_an_older_job_gets_them_at_its_next_launch():
    from omnitrain.operator.handlers import Controller
    from omnitrain.operator.settings import OperatorSettings

    kube = RecordingKube()
    controller = Controller(kube, OperatorSettings())  # type: ignore[arg-type]
    controller._reconcile_once("ns", "j")  # the first launch: every pod is missing, so all are created
    assert {"ServiceAccount", "Role", "RoleBinding", "Pod"} <= set(kube.created[-1])
    assert kube.job["status"]["children"]["gangReaders"] == "j-gang"
    # a job launched by an operator without gang readers, now at a restart: it gets them then
    older = dict(kube.job["status"], launchedAttempt=None, attempt=1, phase="Restarting")
    older["children"] = {k: v for k, v in older["children"].items() if k != "gangReaders"}
    kube = RecordingKube(older)
    Controller(kube, OperatorSettings())._reconcile_once("ns", "j")  # type: ignore[arg-type]
    assert {"ServiceAccount", "Role", "RoleBinding"} <= set(kube.created[-1]), kube.created
    # and with the status saying they exist, a relaunch renders none
    again = dict(kube.job["status"], launchedAttempt=None, attempt=2, phase="Restarting")
    kube = RecordingKube(again)
    Controller(kube, OperatorSettings())._reconcile_once("ns", "j")  # type: ignore[arg-type]
    assert kube.created and not {"ServiceAccount", "Role", "RoleBinding"} & set(kube.created[-1]), kube.created
