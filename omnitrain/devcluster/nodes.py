"""Node objects of the local cluster: the agent's real nodes and kwok's fake GPU nodes (pure builders + thin API)."""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain.timestamps import now_rfc3339

LOCAL_LABEL = "omnitrain.dev/local"
RACK_LABEL = "omnitrain.dev/rack"
ZONE_LABEL = "topology.kubernetes.io/zone"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
KUBELET_VERSION = "v1.34.4"


@dataclass(frozen=True)
class NodeShape:
    gpus: int = 2
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    zone: str = "local-zone-a"
    rack: str = "rack-0"


def ready_condition(heartbeat: str, ready: bool = True) -> dict:
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": heartbeat,
        "reason": "KubeletReady" if ready else "NodeAgentNotRunning",
        "message": "omnitrain local node agent is posting ready status"
        if ready
        else "no omnitrain node agent has taken this node over yet",
    }


def node_addresses(name: str) -> list[dict]:
    """A local node's addresses: the API server dials the InternalIP (--kubelet-preferred-address-types) for logs."""
    return [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}]


def node_status_patch(name: str, heartbeat: str, kubelet_port: int) -> dict:
    """What the agent posts for a node it runs, as a kubelet does: Ready, where to reach it, its endpoint's port
    (status.daemonEndpoints.kubeletEndpoint.Port: the API server's `pods/log` dials it; the field is spelled Port)."""
    return {
        "conditions": [ready_condition(heartbeat)],
        "addresses": node_addresses(name),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
    }


def local_node_body(name: str, shape: NodeShape) -> dict:
    capacity = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": str(shape.pods),
        GPU_RESOURCE: str(shape.gpus),
        "ephemeral-storage": "100Gi",
    }
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                LOCAL_LABEL: "true",
                ZONE_LABEL: shape.zone,
                RACK_LABEL: shape.rack,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": node_addresses(name),
            # NotReady until the agent takes it over: a Ready node then means an agent runs its pods
            "conditions": [ready_condition(now, ready=False)],
            "nodeInfo": _node_info("omnitrain-local-agent"),
        },
    }


def kwok_node_body(name: str, gpus: int = 8, zone: str = "kwok-zone-a", rack: str = "kwok-rack-0") -> dict:
    capacity = {"cpu": "96", "memory": "1024Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                ZONE_LABEL: zone,
                RACK_LABEL: rack,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
        },
        "spec": {"taints": [{"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": dict(capacity), "nodeInfo": _node_info("kwok")},
    }


def _node_info(runtime: str) -> dict:
    return {
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": "amd64",
        "containerRuntimeVersion": f"{runtime}://0",
        "osImage": "local",
        "kernelVersion": "",
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
    }


def create_node(core_api, body: dict) -> bool:
    """Creates the Node; False when it already exists (idempotent `up`)."""
    from kubernetes.client.exceptions import ApiException

    try:
        core_api.create_node(body)
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise


def delete_node(core_api, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core_api.delete_node(name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
