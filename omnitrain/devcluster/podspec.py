"""Pure translation of a Pod object (a dict as the API serves it) into what a local process needs: its environment
(downward API, ConfigMap/Secret refs, $(VAR) expansion, cluster DNS names rewritten to pod IPs), its argv and the
host folders behind its volumes. No API calls here: lookups come in as functions."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# <hostname>.<subdomain>.<namespace>.svc[.cluster.local]: the per-pod DNS name a headless Service gives.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
POD_DNS_NAME = re.compile(rf"(?<![-a-z0-9.])({_LABEL})\.({_LABEL})\.({_LABEL})\.svc(?:\.cluster\.local)?(?![-a-z0-9])")
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")


class PodConfigError(Exception):
    """The pod cannot start as written (a missing ConfigMap key, an unknown fieldRef): reported in its status."""


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, unknown ones stay, $$ escapes a dollar."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def rewrite_dns_names(text: str, resolve: Callable[[str, str, str], str]) -> str:
    """Replaces every `<host>.<subdomain>.<ns>.svc[.cluster.local]` with resolve(host, subdomain, ns)."""
    return POD_DNS_NAME.sub(lambda m: resolve(m.group(1), m.group(2), m.group(3)), text)


def dns_target_ip(pods: list[dict], hostname: str, subdomain: str) -> str | None:
    """The IP of the live pod `<hostname>.<subdomain>` names among one namespace's pods; None until it has one."""
    for pod in pods:
        spec = pod["spec"]
        if (
            spec.get("hostname") == hostname
            and spec.get("subdomain") == subdomain
            and not pod["metadata"].get("deletionTimestamp")
        ):
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                return ip
    return None


def hosts_lines(pods: list[tuple[dict, str]]) -> list[str]:
    """/etc/hosts lines for (pod, ip) pairs: each pod with a hostname under a headless Service (subdomain) gets
    `<ip> <host>.<sub>.<ns>.svc.cluster.local <host>.<sub>.<ns>.svc`, the names cluster DNS would answer."""
    lines = []
    for pod, ip in pods:
        spec, meta = pod["spec"], pod["metadata"]
        host, sub = spec.get("hostname"), spec.get("subdomain")
        if host and sub and ip and not meta.get("deletionTimestamp"):
            name = f"{host}.{sub}.{meta.get('namespace', 'default')}.svc"
            lines.append(f"{ip} {name}.cluster.local {name}")
    return sorted(lines)


def field_ref(pod: dict, path: str, pod_ip: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise PodConfigError(f"env fieldRef {path!r} is not supported by the local node agent")


def container_env(
    pod: dict,
    container: dict,
    pod_ip: str,
    get_configmap: Callable[[str, str], dict | None],
    get_secret: Callable[[str, str], dict | None],
) -> dict[str, str]:
    """The environment Kubernetes would give the container (before DNS rewriting), in declaration order."""
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = (
                _require(get_configmap(namespace, source["configMapRef"]["name"]), source["configMapRef"], "ConfigMap")
                or {}
            )
            env.update({prefix + k: v for k, v in (data.get("data") or {}).items()})
        if "secretRef" in source:
            data = _require(get_secret(namespace, source["secretRef"]["name"]), source["secretRef"], "Secret") or {}
            env.update({prefix + k: _b64(v) for k, v in (data.get("data") or {}).items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand_vars(item.get("value", ""), env)
            continue
        value_from = item["valueFrom"]
        if "fieldRef" in value_from:
            env[name] = field_ref(pod, value_from["fieldRef"]["fieldPath"], pod_ip)
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            obj = _require(get_configmap(namespace, ref["name"]), ref, "ConfigMap")
            value = None if obj is None else (obj.get("data") or {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise PodConfigError(f"env {name}: key {ref['key']!r} not found in ConfigMap {ref['name']!r}")
            if value is not None:
                env[name] = value
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            obj = _require(get_secret(namespace, ref["name"]), ref, "Secret")
            value = None if obj is None else (obj.get("data") or {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise PodConfigError(f"env {name}: key {ref['key']!r} not found in Secret {ref['name']!r}")
            if value is not None:
                env[name] = _b64(value)
        elif "resourceFieldRef" in value_from:
            env[name] = "0"  # no resource limits are enforced locally
        else:
            raise PodConfigError(f"env {name}: unsupported valueFrom {sorted(value_from)}")
    return env


def _require(obj: dict | None, ref: dict, kind: str) -> dict | None:
    if obj is None and not ref.get("optional"):
        raise PodConfigError(f"{kind} {ref['name']!r} not found (create it, or mark the reference optional)")
    return obj


def _b64(value: str) -> str:
    return base64.b64decode(value).decode(errors="replace")


def container_argv(container: dict, env: dict[str, str]) -> list[str]:
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        raise PodConfigError(
            f"container {container['name']!r}: no command (the local agent ignores images, so "
            "the command must be given in the pod spec)"
        )
    return [expand_vars(part, env) for part in command + args]


@dataclass(frozen=True)
class Mount:
    source: str  # host path
    target: str  # mountPath seen by the process
    read_only: bool = False

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "readOnly": self.read_only}


def claim_dir(root: Path, claim: str) -> Path:
    """The folder behind a PersistentVolumeClaim, by claim name (the provisioner's volumes point here too)."""
    return root / "pv" / claim


@dataclass(frozen=True)
class VolumeLayout:
    """Where each kind of volume lives on this machine."""

    root: Path  # cluster folder
    pod_dir: Path
    node: str

    def host_path(self, volume: dict) -> Path | None:
        """The host folder behind a volume; None for kinds that have nothing to show locally."""
        if "hostPath" in volume:
            return self.root / "nodes" / self.node / volume["hostPath"]["path"].lstrip("/")
        if "emptyDir" in volume:
            return self.pod_dir / "volumes" / volume["name"]
        if "persistentVolumeClaim" in volume:
            return claim_dir(self.root, volume["persistentVolumeClaim"]["claimName"])
        if "configMap" in volume or "secret" in volume or "projected" in volume:
            return self.pod_dir / "volumes" / volume["name"]
        return None


def file_volume_contents(volume: dict, obj: dict | None) -> dict[str, bytes]:
    """Files (relative path -> bytes) of a configMap/secret volume, honouring `items`."""
    kind = "configMap" if "configMap" in volume else "secret"
    source = volume[kind]
    name = source.get("name") or source.get("secretName")
    if obj is None:
        if source.get("optional"):
            return {}
        raise PodConfigError(f"volume {volume['name']!r}: {kind} {name!r} not found")
    data = (
        {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        if kind == "configMap"
        else {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    )
    if kind == "configMap":
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    if not source.get("items"):
        return data
    files = {}
    for item in source["items"]:
        if item["key"] not in data:
            raise PodConfigError(f"volume {volume['name']!r}: key {item['key']!r} not in {kind} {name!r}")
        files[item["path"]] = data[item["key"]]
    return files


DEFAULT_TOKEN_SECONDS = 3600  # a projected serviceAccountToken without expirationSeconds (the API's default)
ROOT_CA_CONFIG_MAP = "kube-root-ca.crt"


@dataclass(frozen=True)
class TokenSource:
    """A projected serviceAccountToken source: what the agent asks the TokenRequest API for."""

    path: str
    expiration_seconds: int
    audience: str | None


def token_sources(volume: dict) -> list[TokenSource]:
    """The serviceAccountToken sources of a projected volume (none for other kinds)."""
    out = []
    for source in (volume.get("projected") or {}).get("sources") or []:
        token = source.get("serviceAccountToken")
        if token is not None:
            out.append(
                TokenSource(
                    token["path"], int(token.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS), token.get("audience")
                )
            )
    return out


def projected_contents(
    volume: dict,
    get_configmap: Callable[[str], dict | None],
    get_secret: Callable[[str], dict | None],
    tokens: dict[str, bytes],
    cluster_ca: bytes | None = None,
    downward: Callable[[str], str] | None = None,
) -> dict[str, bytes]:
    """Files of a projected volume: configMap and secret sources as in their own volumes, serviceAccountToken
    sources from `tokens` (path -> token, requested by the caller), downwardAPI sources from `downward` (fieldPath
    -> value). `cluster_ca` stands in for the kube-root-ca.crt ConfigMap while kube-controller-manager has not
    published it in a new namespace yet."""
    files: dict[str, bytes] = {}
    for source in volume["projected"].get("sources") or []:
        if "downwardAPI" in source:
            # The API server's ServiceAccount admission gives every pod that mounts its token a
            # kube-api-access-* volume whose third source is the namespace, as a downwardAPI item.
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" not in item or downward is None:
                    raise PodConfigError(
                        f"volume {volume['name']!r}: downwardAPI item {item.get('path')!r}: only fieldRef items "
                        "are supported by the local node agent"
                    )
                files[item["path"]] = downward(item["fieldRef"]["fieldPath"]).encode()
        elif "serviceAccountToken" in source:
            path = source["serviceAccountToken"]["path"]
            files[path] = tokens[path]
        elif "configMap" in source:
            ref = source["configMap"]
            obj = get_configmap(ref["name"])
            if obj is None and ref["name"] == ROOT_CA_CONFIG_MAP and cluster_ca is not None:
                obj = {"data": {"ca.crt": cluster_ca.decode()}}
            files.update(file_volume_contents({"name": volume["name"], "configMap": ref}, obj))
        elif "secret" in source:
            ref = source["secret"]
            obj = get_secret(ref["name"])
            files.update(
                file_volume_contents({"name": volume["name"], "secret": {**ref, "secretName": ref["name"]}}, obj)
            )
        else:
            raise PodConfigError(
                f"volume {volume['name']!r}: projected source {sorted(source)} is not supported by the local node agent"
            )
    return files


def configmap_volumes(pod: dict, name: str) -> list[dict]:
    """The pod's volumes that show ConfigMap `name`."""
    return [v for v in pod["spec"].get("volumes") or [] if (v.get("configMap") or {}).get("name") == name]


def container_mounts(container: dict, volume_paths: dict[str, Path | None]) -> list[Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volume_paths:
            raise PodConfigError(f"volumeMount {vm['name']!r} names no volume of the pod")
        source = volume_paths[vm["name"]]
        if source is None:
            continue
        if vm.get("subPath"):
            source = source / vm["subPath"]
        mounts.append(Mount(str(source), vm["mountPath"], bool(vm.get("readOnly"))))
    return mounts


def rewrite_paths(text: str, mounts: list[Mount]) -> str:
    """Fallback without mount namespaces: mountPath prefixes in a string become the host folders."""
    for mount in sorted(mounts, key=lambda m: -len(m.target)):
        target = mount.target.rstrip("/")
        text = re.sub(rf"(?<![^\s=:,'\"]){re.escape(target)}(?=/|$|[\s:,'\"])", mount.source, text)
    return text
