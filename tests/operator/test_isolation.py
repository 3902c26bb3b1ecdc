"""One job's error is its own (issue 14, case 1): a resync pass with a poisoned job listed before a healthy one
still reconciles the healthy job and reads its progress in the same pass; the poisoned job gets the
ReconcileError condition and one Warning event, and its traceback is logged once, not once per pass. A fake Kube,
no cluster."""

from __future__ import annotations

import copy
import logging

from kubernetes.client.exceptions import ApiException

from omnitrain import contract
from omnitrain.operator import handlers, plan
from omnitrain.operator.handlers import Controller, Resync
from omnitrain.operator.kube import status_patch
from omnitrain.operator.settings import OperatorSettings

SPEC = {"parallelism": {"nodes": 1, "gpusPerNode": 1}}


def job(name: str) -> dict:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1, "creationTimestamp": "t"}
    return {"metadata": meta, "spec": copy.deepcopy(SPEC)}


class FakeKube:
    """Just the calls the Controller makes; `poisoned` jobs' pod listing raises as the API server did for them."""

    def __init__(self, *jobs: dict, poisoned: set[str]) -> None:
        self.jobs = {j["metadata"]["name"]: j for j in jobs}
        self.pods: dict[str, dict] = {}
        self.poisoned = poisoned
        self.events: list[tuple[str, str, str]] = []

    def list_jobs(self, namespaces):
        return [copy.deepcopy(j) for j in self.jobs.values()]

    def get_job(self, namespace, name):
        return copy.deepcopy(self.jobs.get(name))

    def list_pods(self, namespace, name):
        if name in self.poisoned:
            raise ApiException(status=400, reason="Bad Request: unable to parse requirement")
        return [p for p in self.pods.values() if p["metadata"]["labels"][plan.LABEL_JOB] == plan.label_value(name)]

    def nodes(self, names):
        return {}

    def write_status(self, job, status):
        patch = status_patch(job.get("status") or {}, status.to_wire())
        if patch:
            self.jobs[job["metadata"]["name"]]["status"] = status.to_wire()
        return bool(patch)

    def post_event(self, job, event):
        self.events.append((job["metadata"]["name"], event.type, event.reason))

    def apply(self, job, decision, children):
        for child in children or []:
            if child["kind"] == "Pod":
                self.pods.setdefault(child["metadata"]["name"], child)
        self.write_status(job, decision.status)


def run_all_pods(kube: FakeKube) -> None:
    for pod in kube.pods.values():
        pod["spec"]["nodeName"] = "node-1"
        pod["status"] = {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "containerStatuses": [{"name": plan.MAIN_CONTAINER, "state": {"running": {"startedAt": "t"}}}],
        }


def cond(kube: FakeKube, name: str, type_: str) -> dict:
    return next((c for c in kube.jobs[name].get("status", {}).get("conditions", []) if c["type"] == type_), {})


def test_a_poisoned_job_does_not_stop_the_resync_for_the_job_after_it(monkeypatch, caplog):
    kube = FakeKube(job("poisoned"), job("healthy"), poisoned={"poisoned"})
    scraped: list[str] = []
    monkeypatch.setattr(handlers.progress, "scrape", lambda ip, port: scraped.append(ip) or {contract.METRIC_STEP: 200})
    resync = Resync(Controller(kube, OperatorSettings()), interval=0)  # type: ignore[arg-type]

    with caplog.at_level(logging.DEBUG, logger="omnitrain.operator"):
        resync.run_once()  # the healthy job is launched although the one before it raised
        assert [p["metadata"]["labels"][plan.LABEL_JOB] for p in kube.pods.values()] == ["healthy"]
        run_all_pods(kube)
        resync.run_once()  # ... and seen Running, and its progress read, in the same pass

    assert kube.jobs["healthy"]["status"]["phase"] == "Running"
    assert scraped == ["10.0.0.7"] and kube.jobs["healthy"]["status"]["currentStep"] == 200
    error = cond(kube, "poisoned", "ReconcileError")
    assert error["status"] == "True" and "unable to parse requirement" in error["message"]
    assert kube.events.count(("poisoned", "Warning", "ReconcileError")) == 1  # one event, not one per pass
    poisoned = kube.jobs["poisoned"]["status"]  # it never had a phase: it gets one, and the error as its message
    assert poisoned["phase"] == "Pending" and "unable to parse requirement" in poisoned["message"]
    tracebacks = [r for r in caplog.records if r.exc_info and "poisoned" in r.getMessage()]
    assert len(tracebacks) == 1
    assert not cond(kube, "healthy", "ReconcileError")


def test_a_clean_pass_clears_the_error():
    kube = FakeKube(job("flaky"), poisoned={"flaky"})
    controller = Controller(kube, OperatorSettings())  # type: ignore[arg-type]
    controller.reconcile("ns", "flaky")  # raises inside, never out of the controller
    assert cond(kube, "flaky", "ReconcileError")["status"] == "True"
    kube.poisoned.clear()
    controller.reconcile("ns", "flaky")
    assert cond(kube, "flaky", "ReconcileError")["status"] == "False"
    assert kube.jobs["flaky"]["status"]["phase"]


def test_a_stopped_resync_ends_without_another_pass():
    """kopf's cleanup stops the resync (handlers.stop_resync): it must end at once, not after its interval, and
    must not list the jobs again (an embedding bench tears the API server down next)."""
    kube = FakeKube(job("j"), poisoned=set())
    listed: list[int] = []
    kube.list_jobs = lambda namespaces: listed.append(1) or []  # type: ignore[method-assign]
    resync = Resync(Controller(kube, OperatorSettings()), interval=3600)  # type: ignore[arg-type]
    resync.start()
    resync.stop()
    resync.join(timeout=30)
    assert not resync.is_alive() and listed == []


def test_a_job_deleted_while_its_pass_runs_is_no_error(caplog):
    """The pass's last call (here the pod listing; in the recovery bench its status patch) gets a 404 because the
    job was deleted meanwhile: no traceback, no error recorded; a 404 for a job that still exists stays an error."""
    kube = FakeKube(job("going"), job("staying"), poisoned=set())

    def list_pods(namespace, name):
        if name == "going":
            del kube.jobs["going"]
        raise ApiException(status=404, reason="Not Found")

    kube.list_pods = list_pods  # type: ignore[method-assign]
    controller = Controller(kube, OperatorSettings())  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="omnitrain.operator"):
        controller.reconcile("ns", "going")
        assert not [r for r in caplog.records if r.exc_info]
        assert any("deleted meanwhile" in r.getMessage() for r in caplog.records)
        assert kube.events == []
        controller.reconcile("ns", "staying")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["ns/staying: reconcile failed"]
    assert cond(kube, "staying", "ReconcileError")["status"] == "True"
