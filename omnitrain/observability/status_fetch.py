"""The thin layer of `omnitrain status` and `omnitrain report`: read a job, its pods and its events from the API
server as plain dicts (camelCase, as `kubectl get -o json` shows them). No torch; the kubernetes client only."""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain.contract import GROUP, PLURAL, VERSION


@dataclass
class JobSnapshot:
    job: dict
    pods: list[dict]
    events: list[dict]


class JobNotFound(LookupError):
    pass


class ClusterUnreachable(ConnectionError):
    pass


def _load_config() -> None:
    from kubernetes import config

    try:
        config.load_kube_config()
    except Exception as kubeconfig_error:
        try:
            config.load_incluster_config()
        except Exception:
            raise ClusterUnreachable(
                f"no usable kubeconfig ({kubeconfig_error}); set KUBECONFIG, e.g. "
                "`export KUBECONFIG=$PWD/.dev/cluster/kubeconfig` after `omnitrain dev up`"
            ) from None


def fetch_job(name: str, namespace: str) -> JobSnapshot:
    """The job object, the pods it owns and the events about either."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    _load_config()
    api_client = client.ApiClient()
    try:
        job = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=10
        )
    except ApiException as exc:
        if exc.status == 404:
            raise JobNotFound(
                f"OmniTrainingJob {namespace}/{name} not found; list jobs with `kubectl get {PLURAL} -n {namespace}`"
            ) from None
        raise
    except HTTPError as exc:
        raise ClusterUnreachable(
            f"cannot reach the API server at {api_client.configuration.host} ({exc}); "
            "check KUBECONFIG and that the cluster is up"
        ) from None
    core = client.CoreV1Api(api_client)
    uid = (job.get("metadata") or {}).get("uid")
    pods = [
        api_client.sanitize_for_serialization(p)
        for p in core.list_namespaced_pod(namespace).items
        if any(ref.uid == uid for ref in (p.metadata.owner_references or []))
    ]
    uids = {uid} | {p["metadata"].get("uid") for p in pods}
    events = [
        api_client.sanitize_for_serialization(e)
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object is not None and e.involved_object.uid in uids
    ]
    return JobSnapshot(job=job, pods=pods, events=events)


def scrape_live_metrics(pods: list[dict], port: int, timeout_s: float = 2.0) -> dict[str, float] | None:
    """Job figures from the pod that serves them (global rank 0) as {sample name: value}; None when no running pod's
    endpoint answers (e.g. outside the cluster network)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from omnitrain import contract

    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            continue
        samples = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if "le" not in s.labels and "quantile" not in s.labels
        }
        if contract.METRIC_STEP in samples:
            return samples
    return None


__all__ = ["scrape_live_metrics", "ClusterUnreachable", "JobNotFound", "JobSnapshot", "fetch_job"]
