"""A child the API server refuses anyway (issue 14, case 3b): 422/400 on create, or 409 for a name the job does not
own. The kube layer raises ChildRefused (and leaves a foreign object untouched), `child_refused` turns it into the
job's Failed decision with the API's field translated to the spec's, and the launch is undone in the same pass.
Fake Kube and a fake CoreV1Api, no cluster (tests/operator/test_refused_e2e.py does it against the API server)."""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes.client.exceptions import ApiException

from omnitrain.operator import plan
from omnitrain.operator.handlers import Controller
from omnitrain.operator.kube import Kube, status_patch
from omnitrain.operator.reconcile import ChildRefused, child_refused, spec_field
from omnitrain.operator.settings import OperatorSettings
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-j")
POD = "j-a0-n0"


def api_error(code: int, body: dict | None = None) -> ApiException:
    exc = ApiException(status=code, reason="refused")
    exc.body = json.dumps(body) if body is not None else None
    return exc


# What kube-apiserver answers for a pod whose image is empty (a metav1.Status).
IMAGE_422 = {
    "kind": "Status",
    "status": "Failure",
    "message": f'Pod "{POD}" is invalid: spec.containers[0].image: Required value',
    "reason": "Invalid",
    "details": {
        "name": POD,
        "kind": "Pod",
        "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"}],
    },
    "code": 422,
}


@pytest.mark.parametrize(
    ("kind", "api_field", "spec"),
    [
        ("Pod", "spec.containers[0].image", "spec.image"),
        ("Pod", "spec.nodeSelector", "spec.scheduling.nodeSelector"),
        ("Pod", "spec.tolerations[1].key", "spec.scheduling.tolerations[1].key"),
        ("Pod", "spec.containers[0].resources.limits[nvidia.com/gpu]", "spec.scheduling.gpuResource"),
        ("Pod", "spec.containers[0].resources.requests[memory]", "spec.resources.memory"),
        ("Pod", "spec.containers[0].resources.limits[cpu]", "spec.resources.cpu"),
        ("Pod", "spec.volumes[1].hostPath.path", "spec.checkpoint.localPath"),
        ("Pod", "spec.containers[0].volumeMounts[2].mountPath", "spec.checkpoint.persistentPath"),
        ("Pod", "spec.volumes[2].persistentVolumeClaim.claimName", "spec.checkpoint.persistentClaim"),
        ("Pod", "spec.priorityClassName", "spec.scheduling.priorityClassName"),
        ("Pod", "spec.subdomain", "metadata.name"),
        ("Service", "spec.ports[1]", "spec.metricsPort"),
        ("ConfigMap", "metadata.name", "metadata.name"),
        ("Pod", "spec.containers[0].livenessProbe", None),
        ("Service", "spec.containers[0].image", None),  # the table is per kind
    ],
)
def test_api_field_paths_translate_to_spec_fields(kind, api_field, spec):
    assert spec_field(kind, api_field) == spec


def test_the_api_status_body_is_read_into_causes():
    err = ChildRefused.from_api("Pod", POD, 422, json.dumps(IMAGE_422))
    assert err.causes == [("spec.containers[0].image", "Required value")] and not err.conflict
    bare = ChildRefused.from_api("Pod", POD, 400, b"not json")  # a 400 may carry no Status at all
    assert bare.causes == [] and bare.message == "not json"


def children() -> list[dict]:
    return plan.plan_children(JOB, JobSpec(), 0)


def test_a_refused_pod_fails_the_job_naming_the_spec_field_and_undoes_the_launch():
    err = ChildRefused.from_api("Pod", POD, 422, json.dumps(IMAGE_422))
    d = child_refused(JobStatus(phase="Pending", attempt=0, launched_attempt=0), err, children(), "t")
    st = d.status
    assert st.phase == "Failed" and st.completion_time == "t" and st.children is None
    failed, valid = st.condition("Failed"), st.condition("Valid")
    assert failed is not None and failed.reason == "ChildRefused" and valid is not None and valid.status == "False"
    assert (failed.message or "").startswith("spec.image: Required value (the API server refused Pod 'j-a0-n0'")
    assert "spec.containers[0].image" in (failed.message or "")
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "ChildRefused")]
    assert d.delete_children == [("ConfigMap", "j-config"), ("Service", "j")]  # the refused pod never existed


def test_a_name_taken_by_a_foreign_object_fails_the_job_naming_it_and_leaves_it_alone():
    err = ChildRefused("ConfigMap", "j-config", 409, "already exists", owner="nothing")
    d = child_refused(JobStatus(), err, children(), "t")
    failed = d.status.condition("Failed")
    assert failed is not None and failed.reason == "NameConflict" and "ConfigMap 'j-config'" in (failed.message or "")
    assert "owned by nothing" in (failed.message or "") and d.status.condition("Valid") is None
    assert ("ConfigMap", "j-config") not in d.delete_children and ("Pod", POD) in d.delete_children


class FakeCore:
    """The CoreV1Api calls create_if_absent/delete_child make; `existing` answers 409 and is read back."""

    def __init__(self, existing: dict[str, dict] | None = None, refuse: dict[str, ApiException] | None = None):
        self.existing, self.refuse = existing or {}, refuse or {}
        self.patched: list[str] = []
        self.created: list[str] = []
        self.deleted: list[str] = []

    def _create(self, ns, obj, **_):
        name = obj["metadata"]["name"]
        if name in self.refuse:
            raise self.refuse[name]
        if name in self.existing:
            raise api_error(409, {"reason": "AlreadyExists"})
        self.created.append(name)
        self.existing[name] = copy.deepcopy(obj)

    create_namespaced_pod = create_namespaced_service = create_namespaced_config_map = _create

    def _read(self, name, ns, _preload_content=True):
        class Response:
            data = json.dumps(self.existing[name]).encode()

        return Response()

    read_namespaced_pod = read_namespaced_service = read_namespaced_config_map = _read

    def patch_namespaced_config_map(self, name, ns, body):
        self.patched.append(name)

    def _delete(self, name, ns, **_):
        if name not in self.existing:
            raise api_error(404)
        self.deleted.append(name)
        del self.existing[name]

    delete_namespaced_pod = delete_namespaced_service = delete_namespaced_config_map = _delete


def fake_kube(core: FakeCore) -> Kube:
    kube = Kube.__new__(Kube)  # no ApiClient: only the calls above are made
    kube.core, kube.create_workers = core, 1  # type: ignore[assignment]
    kube.pod_cache = None
    return kube


def test_create_if_absent_raises_on_422_and_on_a_foreign_409_and_keeps_its_own():
    cm = children()[0]
    foreign = {"metadata": {"name": "j-config", "ownerReferences": []}, "data": {"theirs": "1"}}
    core = FakeCore(existing={"j-config": foreign})
    with pytest.raises(ChildRefused) as raised:
        fake_kube(core).create_if_absent(cm)
    assert raised.value.conflict and raised.value.owner == "nothing" and core.patched == []  # not overwritten
    other = {
        "metadata": {"name": "j-config", "ownerReferences": [{"kind": "OmniTrainingJob", "name": "o", "uid": "x"}]}
    }
    core = FakeCore(existing={"j-config": other})
    with pytest.raises(ChildRefused, match="409") as raised:
        fake_kube(core).create_if_absent(cm)
    assert raised.value.owner == "OmniTrainingJob 'o' (uid x)"
    core = FakeCore(existing={"j-config": copy.deepcopy(cm)})  # the job's own (an operator restarted mid-launch)
    assert fake_kube(core).create_if_absent(cm) is False and core.patched == ["j-config"]
    core = FakeCore(refuse={POD: api_error(422, IMAGE_422)})
    with pytest.raises(ChildRefused) as raised:
        fake_kube(core).create_if_absent(children()[2])
    assert raised.value.causes == [("spec.containers[0].image", "Required value")]


class ControllerKube:
    """A fake Kube for the Controller whose Kube.apply is the real one over a FakeCore."""

    def __init__(self, job: dict, core: FakeCore) -> None:
        self.job, self.core = job, core
        self.real = fake_kube(core)
        self.events: list[tuple[str, str]] = []

    def get_job(self, namespace, name):
        return copy.deepcopy(self.job)

    def list_pods(self, namespace, name):
        return []

    def nodes(self, names):
        return {}

    def write_status(self, job, status):
        patch = status_patch(job.get("status") or {}, status.to_wire())
        self.job["status"] = status.to_wire()
        return bool(patch)

    def post_event(self, job, event):
        self.events.append((event.type, event.reason))

    def apply(self, job, decision, children):
        self.real.write_status = self.write_status  # type: ignore[method-assign]
        self.real.post_event = self.post_event  # type: ignore[method-assign]
        Kube.apply(self.real, job, decision, children)


@pytest.mark.parametrize("refused_rank", [0, 1])
def test_a_pass_whose_pod_is_refused_ends_failed_with_nothing_left(refused_rank):
    job = {
        "metadata": {"name": "j", "namespace": "ns", "uid": "uid-j", "generation": 1},
        "spec": {"parallelism": {"nodes": 2}},
    }
    core = FakeCore(refuse={f"j-a0-n{refused_rank}": api_error(422, IMAGE_422)})
    kube = ControllerKube(job, core)
    Controller(kube, OperatorSettings()).reconcile("ns", "j")  # type: ignore[arg-type]
    st = kube.job["status"]
    assert st["phase"] == "Failed", st
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ChildRefused" and failed["message"].startswith("spec.image: Required value")
    assert not any(c["type"] == "ReconcileError" for c in st["conditions"])
    assert core.existing == {}  # ConfigMap, Service and the other pod were created, then deleted
    assert sorted(core.created) == sorted(core.deleted) and {"j-config", "j"} <= set(core.created)
    assert ("j-a0-n0" in core.created) == (refused_rank == 1)  # the rank created before the refused one
    assert kube.events == [("Warning", "ChildRefused")]


def test_a_pass_whose_config_map_name_is_taken_fails_and_leaves_it_unchanged():
    job = {"metadata": {"name": "j", "namespace": "ns", "uid": "uid-j", "generation": 1}, "spec": {}}
    foreign = {"metadata": {"name": "j-config"}, "data": {"theirs": "1"}}
    core = FakeCore(existing={"j-config": copy.deepcopy(foreign)})
    kube = ControllerKube(job, core)
    Controller(kube, OperatorSettings()).reconcile("ns", "j")  # type: ignore[arg-type]
    st = kube.job["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert st["phase"] == "Failed" and failed["reason"] == "NameConflict" and "'j-config'" in failed["message"]
    assert core.existing == {"j-config": foreign} and core.patched == [] and core.created == []
    assert kube.events == [("Warning", "NameConflict")]


def test_an_edited_spec_after_a_refusal_is_judged_again():
    from omnitrain.operator.reconcile import parse_spec, reconcile

    err = ChildRefused.from_api("Pod", POD, 422, json.dumps(IMAGE_422))
    refused = child_refused(JobStatus(observed_generation=1), err, children(), "t").status
    same = reconcile(JOB, parse_spec({}), refused, [], "t2", generation=1)
    assert same.status.phase == "Failed" and same.create_attempt is None  # a finished record stays
    edited = reconcile(JOB, parse_spec({}), refused, [], "t3", generation=2)
    assert edited.create_attempt == 0 and edited.status.phase == "Pending"


def test_a_leftover_of_a_deleted_job_of_the_same_name_is_waited_for_not_a_conflict():
    """Deleted and created again before the garbage collector caught up: the old job's ConfigMap still has the
    name. Not a NameConflict (the GC removes it: its owner is gone); the pass is tried again until it is."""
    from omnitrain.operator.kube import ChildLeftover

    old = {
        "metadata": {
            "name": "j-config",
            "ownerReferences": [
                {"apiVersion": "omnitrain.dev/v1", "kind": "OmniTrainingJob", "name": "j", "uid": "old"}
            ],
        },
        "data": {"old": "1"},
    }
    job = {"metadata": {"name": "j", "namespace": "ns", "uid": "uid-j", "generation": 1}, "spec": {}}
    core = FakeCore(existing={"j-config": copy.deepcopy(old)})
    kube = ControllerKube(job, core)
    controller = Controller(kube, OperatorSettings())  # type: ignore[arg-type]
    with pytest.raises(ChildLeftover):
        kube.real.create_if_absent(plan.plan_children(JOB, JobSpec(), 0)[0])
    controller.reconcile("ns", "j")
    st = kube.job["status"]
    assert st.get("phase") != "Failed" and core.patched == [] and core.existing["j-config"] == old
    error = next(c for c in st["conditions"] if c["type"] == "ReconcileError")
    assert error["status"] == "True" and "garbage collector" in error["message"]
    del core.existing["j-config"]  # the garbage collector
    controller.reconcile("ns", "j")
    assert kube.job["status"]["phase"] == "Pending" and "j-a0-n0" in core.existing
    dying = {"metadata": {"name": "j-config", "deletionTimestamp": "t"}}
    with pytest.raises(ChildLeftover):
        fake_kube(FakeCore(existing={"j-config": dying})).create_if_absent(plan.plan_children(JOB, JobSpec(), 0)[0])


def test_the_operators_role_may_read_and_delete_what_a_refused_launch_touches():
    """create_if_absent reads an existing child back (get) and an undone launch deletes its children (delete)."""
    from pathlib import Path

    import yaml

    role = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests/rbac/cluster-role.yaml").read_text())
    granted = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"] if "" in rule["apiGroups"]}
    for resource in ("pods", "services", "configmaps"):
        assert {"get", "create", "delete"} <= granted[resource], resource


# What the API server answered in the generated-spec test (tests/operator/test_generated_specs.py) for a pod whose
# PriorityClass does not exist: admission's 403, which no spec check can know of beforehand.
PRIORITY_403 = (
    '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \\"j-a0-n0\\" is '
    'forbidden: no PriorityClass with name high was found","reason":"Forbidden","details":{"name":"j-a0-n0",'
    '"kind":"pods"},"code":403}'
)
RBAC_403 = (
    '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User '
    '\\"system:serviceaccount:omnitrain:operator\\" cannot create resource \\"pods\\" in API group \\"\\" in the '
    'namespace \\"ns\\"","reason":"Forbidden","details":{"kind":"pods"},"code":403}'
)


def test_admission_403_is_a_refusal_and_an_rbac_403_is_not():
    from omnitrain.operator.reconcile import refused_by_the_api

    assert refused_by_the_api(403, PRIORITY_403) and refused_by_the_api(422, json.dumps(IMAGE_422))
    assert not refused_by_the_api(403, RBAC_403)  # the install is at fault: retried, the job is not failed
    assert not refused_by_the_api(500, "boom") and not refused_by_the_api(429, None)
    core = FakeCore(refuse={POD: api_error(403, json.loads(PRIORITY_403))})
    with pytest.raises(ChildRefused, match="no PriorityClass with name high"):
        fake_kube(core).create_if_absent(children()[2])
    core = FakeCore(refuse={POD: api_error(403, json.loads(RBAC_403))})
    with pytest.raises(ApiException) as raised:
        fake_kube(core).create_if_absent(children()[2])
    assert not isinstance(raised.value, ChildRefused) and raised.value.status == 403
