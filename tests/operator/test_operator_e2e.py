"""The operator against a real API server: children, status transitions, validation, suspend/resume, deletion,
restart mid-launch, gang restart and permanent failure, progress from rank 0's metrics endpoint."""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path

import dying_operator
import pytest
import yaml
from control_plane import wait_until
from jobs import cond, create_job, events, get_job, patch_spec, pod_names, pods, set_all, set_hung, set_pod, status
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from omnitrain import contract
from omnitrain.operator import plan

pytestmark = pytest.mark.e2e

SPEC = {"parallelism": {"nodes": 2, "gpusPerNode": 2}, "training": {"steps": 30}, "resilience": {"maxRestarts": 2}}
T = 30  # seconds any one transition may take on a busy shared machine


def phase_is(api, ns, name, phase):
    return lambda: status(api, ns, name).get("phase") == phase


def test_job_runs_to_success_with_children_owned_by_the_job(api, operator, namespace):
    ns, core = namespace, client.CoreV1Api(api)
    job = create_job(api, ns, "quick", SPEC)
    uid = job["metadata"]["uid"]
    wait_until(
        lambda: pod_names(api, ns, "quick") == ["quick-a0-n0", "quick-a0-n1"],
        T,
        "two pods",
    )
    svc = core.read_namespaced_service("quick", ns)
    cm = core.read_namespaced_config_map("quick-config", ns)
    for obj in [svc, cm, *pods(api, ns, "quick")]:
        (owner,) = obj.metadata.owner_references
        assert owner.uid == uid and owner.controller and owner.block_owner_deletion
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses
    config = yaml.safe_load(cm.data[contract.CONFIG_FILE])
    assert config["run"]["jobName"] == "quick" and config["spec"]["parallelism"]["nodes"] == 2
    pod = core.read_namespaced_pod("quick-a0-n1", ns)
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["PET_NODE_RANK"] == "1" and env["MASTER_ADDR"] == f"n0.quick.{ns}.svc.cluster.local"
    assert pod.spec.containers[0].command[0] == "python"  # the operator's OMNITRAIN_TRAIN_COMMAND setting
    wait_until(phase_is(api, ns, "quick", "Pending"), T, "phase Pending")

    set_all(api, ns, "quick", "Running")
    wait_until(phase_is(api, ns, "quick", "Running"), T, "phase Running")
    assert cond(status(api, ns, "quick"), "Running")["status"] == "True"
    set_all(api, ns, "quick", "Succeeded", 0)
    wait_until(phase_is(api, ns, "quick", "Succeeded"), T, "phase Succeeded")
    st = status(api, ns, "quick")
    assert cond(st, "Succeeded")["status"] == "True" and cond(st, "Running")["status"] == "False"
    assert cond(st, "Created")["status"] == "True" and cond(st, "Valid")["status"] == "True"
    assert st["completionTime"] and st["attempt"] == 0 and st["restarts"] == 0
    reasons = {e.reason for e in events(api, ns, "quick")}
    assert {"Created", "Running", "Succeeded"} <= reasons, operator.tail()


def test_a_job_with_a_100_character_name_gets_pods_and_a_phase(api, operator, namespace):
    """Issue 14, case 2: the job-name label value is cut and hashed to 63 characters; the operator lists the pods
    by the same cut value, so the job is reconciled like any other (before: the pod list was refused, no status)."""
    ns, name = namespace, "long-" + "n" * 94 + "e"
    assert len(name) == 100
    create_job(api, ns, name, SPEC)
    wait_until(lambda: len(pods(api, ns, name)) == 2, T, "two pods")
    assert {p.metadata.labels[plan.LABEL_JOB] for p in pods(api, ns, name)} == {plan.label_value(name)}
    wait_until(phase_is(api, ns, name, "Pending"), T, "phase Pending")
    set_all(api, ns, name, "Running")
    wait_until(phase_is(api, ns, name, "Running"), T, "phase Running")
    assert cond(status(api, ns, name), "Running")["status"] == "True"
    assert not cond(status(api, ns, name), "ReconcileError"), operator.tail()


def test_quantities_as_numbers_are_accepted_and_a_bad_one_fails_the_job(api, operator, namespace):
    """Issue 14, case 4: the API server takes `cpu: 2` (before: "must be of type string"); `memory: lots` passes the
    schema (int-or-string) and the operator fails the job naming the field, creating nothing."""
    ns = namespace
    create_job(api, ns, "cpu-number", {**SPEC, "resources": {"cpu": 2, "memory": "1Gi"}})
    wait_until(lambda: len(pods(api, ns, "cpu-number")) == 2, T, "two pods")
    assert pods(api, ns, "cpu-number")[0].spec.containers[0].resources.requests["cpu"] == "2"
    create_job(api, ns, "lots", {**SPEC, "resources": {"memory": "lots"}})
    wait_until(phase_is(api, ns, "lots", "Failed"), T, "phase Failed")
    valid = cond(status(api, ns, "lots"), "Valid")
    assert (
        valid["reason"] == "InvalidSpec"
        and "spec.resources.memory: 'lots' is not a Kubernetes quantity" in valid["message"]
    )
    assert pods(api, ns, "lots") == []


def test_schema_rejects_malformed_specs_naming_the_field(api, namespace):
    with pytest.raises(ApiException) as err:
        create_job(api, namespace, "bad-schema", {"parallelism": {"nodes": 0}})
    assert err.value.status == 422 and "spec.parallelism.nodes" in err.value.body
    with pytest.raises(ApiException) as err:
        create_job(api, namespace, "bad-cel", {"parallelism": {"gpusPerNode": 2, "tensor": 4}})
    assert err.value.status == 422 and "spec.parallelism.tensor" in err.value.body
    assert "gpusPerNode" in err.value.body
    with pytest.raises(ApiException) as err:
        create_job(api, namespace, "bad-enum", {"training": {"stage": "rlhf"}})
    assert err.value.status == 422 and "spec.training.stage" in err.value.body


def test_semantically_invalid_spec_fails_without_children(api, operator, namespace):
    ns, core = namespace, client.CoreV1Api(api)
    create_job(api, ns, "bad", {"parallelism": {"nodes": 1, "gpusPerNode": 2, "pipeline": 3}})
    wait_until(phase_is(api, ns, "bad", "Failed"), T, "phase Failed")
    valid = cond(status(api, ns, "bad"), "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.parallelism" in valid["message"] and "change the degrees" in valid["message"]
    warnings = [e for e in events(api, ns, "bad") if e.type == "Warning" and e.reason == "InvalidSpec"]
    assert warnings and "spec.parallelism" in warnings[0].message
    assert pods(api, ns, "bad") == []
    assert (
        core.list_namespaced_service(ns).items == []
        and core.list_namespaced_config_map(ns, label_selector=plan.LABEL_JOB).items == []
    )
    # fixing the spec starts the job
    patch_spec(api, ns, "bad", {"parallelism": {"pipeline": 1}})
    wait_until(lambda: pod_names(api, ns, "bad") == ["bad-a0-n0"], T, "the pod of the fixed job")
    # the pass writes status after its creates: the pod can be seen before the condition
    wait_until(lambda: cond(status(api, ns, "bad"), "Valid")["status"] == "True", T, "Valid True after the fix")


def test_suspend_deletes_pods_and_resume_relaunches(api, operator, namespace):
    ns = namespace
    create_job(api, ns, "pausable", SPEC)
    wait_until(lambda: len(pods(api, ns, "pausable")) == 2, T, "two pods")
    set_all(api, ns, "pausable", "Running")
    wait_until(phase_is(api, ns, "pausable", "Running"), T, "Running")
    patch_spec(api, ns, "pausable", {"suspend": True})
    wait_until(
        lambda: pods(api, ns, "pausable") == [] and status(api, ns, "pausable").get("phase") == "Suspended",
        T,
        "no pods, phase Suspended",
    )
    assert cond(status(api, ns, "pausable"), "Suspended")["status"] == "True"
    client.CoreV1Api(api).read_namespaced_service("pausable", ns)  # kept while suspended
    patch_spec(api, ns, "pausable", {"suspend": False})
    # the pods are created before the status that counts them is written (the kube layer's order): wait for both
    wait_until(
        lambda: (
            pod_names(api, ns, "pausable") == ["pausable-a1-n0", "pausable-a1-n1"]
            and status(api, ns, "pausable").get("launchedAttempt") == 1
        ),
        T,
        "attempt 1 pods",
    )
    st = status(api, ns, "pausable")
    assert st["attempt"] == 1 and st["restarts"] == 0 and cond(st, "Suspended")["status"] == "False"


def test_deleting_the_job_deletes_its_children(api, operator, namespace):
    ns, core = namespace, client.CoreV1Api(api)
    create_job(api, ns, "short-lived", SPEC)
    wait_until(lambda: len(pods(api, ns, "short-lived")) == 2, T, "two pods")
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "omnitrain.io", "v1alpha1", ns, "omnitrainingjobs", "short-lived"
    )
    wait_until(
        lambda: (
            not pods(api, ns, "short-lived")
            and not core.list_namespaced_service(ns).items
            and not core.list_namespaced_config_map(ns, label_selector=plan.LABEL_JOB).items
        ),
        60,
        "children garbage-collected",
    )


def test_operator_killed_mid_launch_creates_no_duplicates(api, start_operator, operator, namespace):
    ns = namespace
    spec = {**SPEC, "parallelism": {"nodes": 4, "gpusPerNode": 1}}
    operator.stop()  # the session operator must not finish the launch for us
    try:
        # one create at a time so the exit lands after exactly: ConfigMap, Service, one pod
        dying = start_operator(
            {"OMNITRAIN_CREATE_WORKERS": "1"}, command=[sys.executable, str(Path(dying_operator.__file__)), "3"]
        )
        create_job(api, ns, "crashy", spec)
        wait_until(lambda: dying.proc.poll() is not None, 60, "operator exit mid-launch")
        assert dying.proc.returncode == dying_operator.EXIT_CODE, dying.tail()
        expected = [f"crashy-a0-n{r}" for r in range(4)]
        assert pod_names(api, ns, "crashy") == ["crashy-a0-n0"]
        assert "launchedAttempt" not in status(api, ns, "crashy")
        start_operator()
        wait_until(
            lambda: len(pods(api, ns, "crashy")) == 4 and status(api, ns, "crashy").get("launchedAttempt") == 0,
            T,
            "all four pods after restart",
        )
        assert pod_names(api, ns, "crashy") == expected
        set_all(api, ns, "crashy", "Running")
        wait_until(phase_is(api, ns, "crashy", "Running"), T, "Running")
        assert len(pods(api, ns, "crashy")) == 4
    finally:
        operator.start()


def test_retryable_failure_restarts_the_gang_then_permanent_exit_fails(api, operator, namespace):
    ns = namespace
    create_job(api, ns, "flaky", SPEC)
    wait_until(lambda: len(pods(api, ns, "flaky")) == 2, T, "two pods")
    set_all(api, ns, "flaky", "Running")
    wait_until(phase_is(api, ns, "flaky", "Running"), T, "Running")
    set_hung(api, ns, "flaky-a0-n1")
    wait_until(lambda: pod_names(api, ns, "flaky") == ["flaky-a1-n0", "flaky-a1-n1"], T, "attempt 1 pods")
    st = status(api, ns, "flaky")
    assert st["attempt"] == 1 and st["restarts"] == 1
    assert st["lastFailure"]["reason"] == "HangDetected" and st["lastFailure"]["exitCode"] == 42
    assert any(e.reason == "GangRestart" for e in events(api, ns, "flaky"))
    cm = client.CoreV1Api(api).read_namespaced_config_map("flaky-config", ns)
    assert yaml.safe_load(cm.data[contract.CONFIG_FILE])["run"]["attempt"] == 1

    set_all(api, ns, "flaky", "Running", attempt=1)
    wait_until(phase_is(api, ns, "flaky", "Running"), T, "Running again")
    set_pod(
        api,
        ns,
        "flaky-a1-n0",
        "Failed",
        int(contract.ExitCode.CONFIG),
        termination=contract.TerminationMessage(reason="ConfigError", message="data.path has no shards"),
    )
    wait_until(phase_is(api, ns, "flaky", "Failed"), T, "Failed")
    failed = cond(status(api, ns, "flaky"), "Failed")
    assert failed["reason"] == "PermanentFailure" and "data.path has no shards" in failed["message"]
    # the surviving rank is stopped, and no third attempt is started
    wait_until(lambda: pod_names(api, ns, "flaky") == ["flaky-a1-n0"], T, "survivor deleted")
    assert status(api, ns, "flaky")["attempt"] == 1


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_progress_comes_from_rank_zero_metrics(api, operator, namespace):
    ns = namespace
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    _Metrics.body = (
        f"{contract.METRIC_STEP} 17\n{contract.METRIC_TOTAL_STEPS} 30\n{contract.METRIC_LAST_CHECKPOINT_STEP} 10\n"
    ).encode()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        create_job(api, ns, "progress", {**SPEC, "metricsPort": server.server_address[1]})
        wait_until(lambda: len(pods(api, ns, "progress")) == 2, T, "two pods")
        set_pod(api, ns, "progress-a0-n0", "Running", pod_ip="127.0.0.1")
        set_pod(api, ns, "progress-a0-n1", "Running", pod_ip="127.0.0.2")  # nothing listens there
        wait_until(lambda: status(api, ns, "progress").get("currentStep") == 17, T, "currentStep from metrics")
        st = status(api, ns, "progress")
        assert st["totalSteps"] == 30 and st["lastCheckpoint"]["step"] == 10
        assert st["lastCheckpoint"]["path"].endswith("/progress")
    finally:
        server.shutdown()
    assert get_job(api, ns, "progress")["status"]["phase"] == "Running"


def test_training_compile_reaches_the_pods_and_a_refused_combination_fails(api, operator, namespace):
    """Issue 19, compiled blocks: the API server keeps training.compile (a field missing from the CRD's structural
    schema would be pruned silently) and the rendered config carries it; with recompute selective the operator fails
    the job naming spec.memory.recompute, creating nothing."""
    ns, core = namespace, client.CoreV1Api(api)
    create_job(
        api, ns, "compiled", {**SPEC, "training": {"steps": 30, "compile": True}, "memory": {"recompute": "full"}}
    )
    assert get_job(api, ns, "compiled")["spec"]["training"]["compile"] is True
    wait_until(lambda: len(pods(api, ns, "compiled")) == 2, T, "two pods")
    config = yaml.safe_load(core.read_namespaced_config_map("compiled-config", ns).data[contract.CONFIG_FILE])
    assert config["spec"]["training"]["compile"] is True
    create_job(api, ns, "selective", {**SPEC, "training": {"compile": True}, "memory": {"recompute": "selective"}})
    wait_until(phase_is(api, ns, "selective", "Failed"), T, "phase Failed")
    valid = cond(status(api, ns, "selective"), "Valid")
    assert valid["reason"] == "InvalidSpec" and valid["message"].startswith(
        "spec.memory.recompute: training.compile is not supported with recompute selective (use full or none"
    ), valid["message"]
    assert pods(api, ns, "selective") == []
