"""What the local node agent gives a pod that a kubelet gives (for the supervisor's API watch of its gang
announcement): projected serviceAccountToken volumes with the cluster CA, rotated before expiry, and
KUBERNETES_SERVICE_HOST/PORT; and the optional emulated kubelet sync delay of mounted ConfigMaps. No cluster here:
the API is a fake that records what it was asked."""

from __future__ import annotations

import pytest

from omnitrain.devcluster import podspec
from omnitrain.devcluster.launch import TOKEN_REFRESH_FRACTION, Launcher
from omnitrain.devcluster.pods import CONFIGMAP_SYNC_FILE, PodSupervisor
from omnitrain.devcluster.runtime import ContainerRun, PodRun

VOLUME = {
    "name": "gang-api",
    "projected": {
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        ]
    },
}


class FakeApi:
    def __init__(self, configmaps: dict[str, dict] | None = None) -> None:
        self.configmaps = configmaps or {}
        self.token_requests: list[tuple] = []

    def request_token(self, namespace, account, pod, uid, seconds, audience):
        self.token_requests.append((namespace, account, pod, uid, seconds, audience))
        return f"token-{len(self.token_requests)}"

    def get_configmap(self, namespace, name):
        return self.configmaps.get(name)

    def get_secret(self, namespace, name):
        return None


def test_projected_contents_take_tokens_config_maps_and_fall_back_to_the_cluster_ca():
    published = {"data": {"ca.crt": "PUBLISHED"}}
    files = podspec.projected_contents(VOLUME, {"kube-root-ca.crt": published}.get, {}.get, {"token": b"t"}, b"OURS")
    assert files == {"token": b"t", "ca.crt": b"PUBLISHED"}
    files = podspec.projected_contents(VOLUME, {}.get, {}.get, {"token": b"t"}, b"OURS")
    assert files["ca.crt"] == b"OURS"  # kube-controller-manager has not published it in this namespace yet
    with pytest.raises(podspec.PodConfigError, match="not found"):
        podspec.projected_contents(VOLUME, {}.get, {}.get, {"token": b"t"}, None)
    odd = {"name": "v", "projected": {"sources": [{"clusterTrustBundle": {}}]}}
    with pytest.raises(podspec.PodConfigError, match="clusterTrustBundle"):
        podspec.projected_contents(odd, {}.get, {}.get, {}, None)
    assert podspec.token_sources(VOLUME) == [podspec.TokenSource("token", 3600, None)]


# What the API server's ServiceAccount admission adds to every pod that does not opt out of its token.
KUBE_API_ACCESS = {
    "name": "kube-api-access-x7k2p",
    "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {
                "downwardAPI": {
                    "items": [
                        {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                    ]
                }
            },
        ],
    },
}


def test_the_default_kube_api_access_volume_gets_token_ca_and_namespace(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(b"CA")
    api = FakeApi()
    launcher = Launcher(tmp_path, api, mount_ns=False)  # type: ignore[arg-type]
    run = _run(tmp_path, [KUBE_API_ACCESS])
    run.pod["spec"].pop("serviceAccountName")
    container = {
        "name": "main",
        "image": "x",
        "command": ["true"],
        "volumeMounts": [
            {"name": KUBE_API_ACCESS["name"], "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        ],
    }
    launcher.container_spec(run, container)
    folder = run.dir / "volumes" / KUBE_API_ACCESS["name"]
    assert (folder / "namespace").read_text() == "ns" and (folder / "ca.crt").read_bytes() == b"CA"
    assert (folder / "token").read_text() == "token-1"
    assert api.token_requests == [("ns", "default", "p", "uid-p", 3607, None)]
    odd = {
        "name": "v",
        "projected": {"sources": [{"downwardAPI": {"items": [{"path": "cpu", "resourceFieldRef": {}}]}}]},
    }
    with pytest.raises(podspec.PodConfigError, match="only fieldRef"):
        launcher.container_spec(
            _run(tmp_path, [odd]), {**container, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}
        )


def _run(tmp_path, volumes: list[dict]) -> PodRun:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "uid-p"},
        "spec": {"nodeName": "n", "serviceAccountName": "j-gang", "containers": [], "volumes": volumes},
    }
    folder = tmp_path / "pods" / "ns" / "p"
    run = PodRun("ns", "p", "uid-p", "n", "127.200.0.9", folder, pod)
    run.containers["main"] = ContainerRun("main", folder / "containers" / "main", folder / "main.log")
    return run


def test_the_token_is_requested_for_the_pods_account_bound_to_the_pod_and_rotated_at_80_percent(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(b"CA")
    api = FakeApi()
    launcher = Launcher(tmp_path, api, mount_ns=False, api_server=("127.0.0.1", "6443"))  # type: ignore[arg-type]
    run = _run(tmp_path, [VOLUME])
    container = {
        "name": "main",
        "image": "x",
        "command": ["true"],
        "volumeMounts": [{"name": "gang-api", "mountPath": "/var/run/omnitrain-gang-api", "readOnly": True}],
    }
    spec = launcher.container_spec(run, container)
    assert spec["env"]["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and spec["env"]["KUBERNETES_SERVICE_PORT"] == "6443"
    folder = run.dir / "volumes" / "gang-api"
    assert (folder / "token").read_text() == "token-1" and (folder / "ca.crt").read_bytes() == b"CA"
    assert api.token_requests == [("ns", "j-gang", "p", "uid-p", 3600, None)]
    due = launcher.token_due[(run.key, "gang-api")]
    launcher.refresh_tokens(run, due - 1)
    assert len(api.token_requests) == 1  # not due yet
    launcher.refresh_tokens(run, due)
    assert (folder / "token").read_text() == "token-2"
    assert launcher.token_due[(run.key, "gang-api")] >= due + TOKEN_REFRESH_FRACTION * 3600 - 1
    launcher.forget_tokens(run.key)
    assert launcher.token_due == {}


class RecordingSupervisor(PodSupervisor):
    def __init__(self, root):
        super().__init__(root, api=None, launcher=None, manages=lambda node: True)  # type: ignore[arg-type]
        self.applied: list[list[dict]] = []

    def _update_configmap_volumes(self, configmaps):
        self.applied.append([c["metadata"]["name"] for c in configmaps])


def test_config_map_changes_reach_volumes_after_the_emulated_sync_delay(tmp_path, monkeypatch):
    monkeypatch.delenv("OMNITRAIN_DEV_CONFIGMAP_SYNC_SECONDS", raising=False)
    sup = RecordingSupervisor(tmp_path)
    sup.configmaps_changed([{"metadata": {"name": "a"}}], now=100.0)
    assert sup.applied == [["a"]]  # no delay: at once, as before
    monkeypatch.setenv("OMNITRAIN_DEV_CONFIGMAP_SYNC_SECONDS", "5")
    sup.configmaps_changed([{"metadata": {"name": "b"}}], now=100.0)
    (tmp_path / "agent").mkdir(exist_ok=True)
    (tmp_path / "agent" / CONFIGMAP_SYNC_FILE).write_text("60\n")  # the file wins over the env
    assert sup.configmap_sync_seconds() == 60.0
    sup.configmaps_changed([{"metadata": {"name": "c"}}], now=101.0)
    sup.tick(104.9)
    assert sup.applied == [["a"]]
    sup.tick(105.0)
    assert sup.applied == [["a"], ["b"]]
    sup.tick(160.9)
    assert sup.applied == [["a"], ["b"]]
    sup.tick(161.0)
    assert sup.applied == [["a"], ["b"], ["c"]] and sup.configmaps_due == []
