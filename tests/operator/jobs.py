"""Helpers for the e2e tests: jobs through the CRD, pods read back, and pod status written as a kubelet would."""

from __future__ import annotations

import datetime as dt

from kubernetes import client

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.operator import crd, plan


def create_job(api, ns: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(crd.GROUP, crd.VERSION, ns, crd.PLURAL, body)


def get_job(api, ns: str, name: str) -> dict:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(crd.GROUP, crd.VERSION, ns, crd.PLURAL, name)


def patch_spec(api, ns: str, name: str, spec: dict) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        crd.GROUP, crd.VERSION, ns, crd.PLURAL, name, {"spec": spec}
    )


def status(api, ns, name) -> dict:
    return get_job(api, ns, name).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def pods(api, ns: str, job: str) -> list:
    return client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=plan.job_selector(job)).items


def pod_names(api, ns, job) -> list[str]:
    return sorted(p.metadata.name for p in pods(api, ns, job))


def events(api, ns: str, name: str) -> list:
    return [e for e in client.CoreV1Api(api).list_namespaced_event(ns).items if e.involved_object.name == name]


def set_pod(
    api,
    ns: str,
    pod: str,
    phase: str,
    exit_code: int | None = None,
    pod_ip: str = "127.0.0.1",
    termination: TerminationMessage | None = None,
) -> None:
    """Write what a kubelet reports for the trainer container."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if phase == "Running":
        state = {"running": {"startedAt": now}}
    else:
        state = {
            "terminated": {
                "exitCode": exit_code or 0,
                "reason": "Completed" if not exit_code else "Error",
                "startedAt": now,
                "finishedAt": now,
                **({"message": termination.to_json()} if termination else {}),
            }
        }
    body = {
        "status": {
            "phase": phase,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "containerStatuses": [
                {
                    "name": plan.MAIN_CONTAINER,
                    "image": "omnitrain:latest",
                    "imageID": "",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
    }
    client.CoreV1Api(api).patch_namespaced_pod_status(pod, ns, body)


def set_hung(api, ns: str, pod: str) -> None:
    """The pod ended as the watchdog ends a hung rank: exit 42, reason HangDetected."""
    set_pod(
        api,
        ns,
        pod,
        "Failed",
        int(ExitCode.HANG),
        termination=TerminationMessage(reason="HangDetected", message="no step for 60 s"),
    )


def set_all(api, ns, job, phase, exit_code=None, attempt=None):
    for p in pods(api, ns, job):
        if attempt is None or p.metadata.labels[plan.LABEL_ATTEMPT] == str(attempt):
            set_pod(api, ns, p.metadata.name, phase, exit_code)
