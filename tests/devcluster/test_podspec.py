"""The pure translation of a pod spec into a local process's environment, argv and volume folders."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from omnitrain.devcluster.podspec import (
    Mount,
    PodConfigError,
    VolumeLayout,
    container_argv,
    container_env,
    container_mounts,
    expand_vars,
    file_volume_contents,
    rewrite_paths,
)

POD = {
    "metadata": {"name": "rank-1", "namespace": "team", "uid": "u-1", "labels": {"job": "j"}},
    "spec": {"nodeName": "local-node-1"},
}
CONFIGMAPS = {("team", "cfg"): {"data": {"mode": "fast", "path": "/etc/x"}}}
SECRETS = {("team", "tok"): {"data": {"token": base64.b64encode(b"s3cret").decode()}}}


def env_of(container: dict) -> dict:
    return container_env(
        POD, container, "127.1.0.9", lambda ns, n: CONFIGMAPS.get((ns, n)), lambda ns, n: SECRETS.get((ns, n))
    )


def test_downward_api_refs_and_expansion():
    env = env_of(
        {
            "name": "c",
            "env": [
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "JOB", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job']"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                {"name": "ADDR", "value": "$(IP):29500 $$(IP) $(UNDEFINED)"},
            ],
        }
    )
    assert env == {
        "NAME": "rank-1",
        "NS": "team",
        "UID": "u-1",
        "NODE": "local-node-1",
        "IP": "127.1.0.9",
        "JOB": "j",
        "MODE": "fast",
        "TOKEN": "s3cret",
        "ADDR": "127.1.0.9:29500 $(IP) $(UNDEFINED)",
    }


def test_env_from_and_optional_refs():
    env = env_of(
        {
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}}
            ],
        }
    )
    assert env == {"CFG_mode": "fast", "CFG_path": "/etc/x"}


@pytest.mark.parametrize(
    "ref, needle",
    [
        ({"configMapKeyRef": {"name": "nope", "key": "k"}}, "ConfigMap 'nope' not found"),
        ({"configMapKeyRef": {"name": "cfg", "key": "absent"}}, "key 'absent' not found in ConfigMap 'cfg'"),
        ({"fieldRef": {"fieldPath": "status.phase"}}, "status.phase"),
    ],
)
def test_bad_refs_name_the_problem(ref, needle):
    with pytest.raises(PodConfigError, match=needle.replace("(", r"\(")):
        env_of({"name": "c", "env": [{"name": "X", "valueFrom": ref}]})


def test_argv_expands_and_requires_command():
    assert container_argv(
        {"name": "c", "command": ["torchrun"], "args": ["--rdzv=$(ADDR)", "$$HOME"]}, {"ADDR": "127.1.0.2"}
    ) == ["torchrun", "--rdzv=127.1.0.2", "$HOME"]
    with pytest.raises(PodConfigError, match="no command"):
        container_argv({"name": "c", "image": "x", "args": ["a"]}, {})
    assert expand_vars("$$$$", {}) == "$$"


def test_volume_layout_and_mounts(tmp_path):
    layout = VolumeLayout(tmp_path, tmp_path / "pods" / "team" / "rank-1", "local-node-1")
    volumes = {
        "nvme": {"name": "nvme", "hostPath": {"path": "/mnt/nvme"}},
        "pv": {"name": "pv", "persistentVolumeClaim": {"claimName": "ckpt"}},
        "tmp": {"name": "tmp", "emptyDir": {}},
        "token": {"name": "token", "downwardAPI": {"items": []}},  # nothing this agent shows
        "api": {"name": "api", "projected": {"sources": []}},  # written like a configMap volume (tokens, CA)
    }
    paths = {name: layout.host_path(v) for name, v in volumes.items()}
    assert paths["nvme"] == tmp_path / "nodes" / "local-node-1" / "mnt" / "nvme"
    assert paths["pv"] == tmp_path / "pv" / "ckpt"
    assert paths["tmp"] == tmp_path / "pods" / "team" / "rank-1" / "volumes" / "tmp"
    assert paths["token"] is None
    assert paths["api"] == tmp_path / "pods" / "team" / "rank-1" / "volumes" / "api"
    mounts = container_mounts(
        {
            "name": "c",
            "volumeMounts": [
                {"name": "nvme", "mountPath": "/ckpt"},
                {"name": "pv", "mountPath": "/shared", "subPath": "job-a", "readOnly": True},
                {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            ],
        },
        paths,
    )
    assert mounts == [Mount(str(paths["nvme"]), "/ckpt"), Mount(str(paths["pv"] / "job-a"), "/shared", True)]
    with pytest.raises(PodConfigError, match="names no volume"):
        container_mounts({"name": "c", "volumeMounts": [{"name": "ghost", "mountPath": "/x"}]}, paths)


def test_configmap_volume_items():
    volume = {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "mode", "path": "sub/mode.txt"}]}}
    assert file_volume_contents(volume, CONFIGMAPS[("team", "cfg")]) == {"sub/mode.txt": b"fast"}
    whole = {"name": "cfg", "configMap": {"name": "cfg"}}
    assert file_volume_contents(whole, CONFIGMAPS[("team", "cfg")]) == {"mode": b"fast", "path": b"/etc/x"}
    with pytest.raises(PodConfigError, match="not found"):
        file_volume_contents(whole, None)


def test_path_rewrite_fallback():
    mounts = [Mount("/root/c/nodes/n0/mnt/nvme", "/ckpt"), Mount("/root/c/pv/p", "/ckpt/shared")]
    assert rewrite_paths("--dir=/ckpt/shared/run1", mounts) == "--dir=/root/c/pv/p/run1"
    assert rewrite_paths("/ckpt", mounts) == "/root/c/nodes/n0/mnt/nvme"
    assert rewrite_paths("/ckptx/a /data/ckpt", mounts) == "/ckptx/a /data/ckpt"
    assert Path(rewrite_paths("/ckpt/a", mounts)).parts[-1] == "a"


def test_dns_target_ip_is_the_live_pod_with_that_hostname_and_subdomain():
    from omnitrain.devcluster.podspec import dns_target_ip

    def p(host, ip=None, deleting=False, sub="svc"):
        meta = {"name": host, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
        return {"metadata": meta, "spec": {"hostname": host, "subdomain": sub}, "status": {"podIP": ip} if ip else {}}

    pods = [p("n0", "127.1.0.2", deleting=True), p("n0", "127.1.0.3", sub="other"), p("n1"), p("n0", "127.1.0.4")]
    assert dns_target_ip(pods, "n0", "svc") == "127.1.0.4"
    assert dns_target_ip(pods, "n1", "svc") is None  # no IP yet: the caller waits
