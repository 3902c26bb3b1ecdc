"""The node agent's calls to the API server, as raw dicts (the shape the pod spec helpers and status take).

The only module of the agent that builds requests; the rest decide what to ask. 404s of reads and the races a
kubelet expects (an object already gone, a newer incarnation) are answered here, not raised.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"


class AgentApi:
    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.coord = client.CoordinationV1Api(api_client)

    # -- reads -----------------------------------------------------------------------------------------------
    @staticmethod
    def list_raw(fn: Callable[..., Any], **kwargs: Any) -> dict:
        """A listing as the API serves it (items plus metadata.resourceVersion to watch from)."""
        return json.loads(fn(_preload_content=False, **kwargs).data)

    def list_nodes(self, label_selector: str) -> dict:
        return self.list_raw(self.core.list_node, label_selector=label_selector)

    def list_pods(self, **kwargs: Any) -> dict:
        """All namespaces' pods (field_selector= to narrow, e.g. spec.nodeName=<node>)."""
        return self.list_raw(self.core.list_pod_for_all_namespaces, **kwargs)

    def namespace_pods(self, namespace: str) -> list[dict]:
        return self.list_raw(self.core.list_namespaced_pod, namespace=namespace)["items"]

    def list_configmaps(self) -> dict:
        """All namespaces' ConfigMaps."""
        return self.list_raw(self.core.list_config_map_for_all_namespaces)

    def get_configmap(self, namespace: str, name: str) -> dict | None:
        return self._get_raw(self.core.read_namespaced_config_map, name, namespace)

    def get_secret(self, namespace: str, name: str) -> dict | None:
        return self._get_raw(self.core.read_namespaced_secret, name, namespace)

    @staticmethod
    def _get_raw(fn: Callable[..., Any], name: str, namespace: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return json.loads(fn(name, namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def request_token(
        self, namespace: str, service_account: str, pod: str, uid: str, seconds: int, audience: str | None
    ) -> str:
        """A token of the pod's ServiceAccount bound to the pod (TokenRequest API), as the kubelet gets one for a
        projected serviceAccountToken volume: it stops working once the pod is gone."""
        body: Any = {  # the client takes plain dicts for its models
            "spec": {
                "audiences": [audience] if audience else [],  # empty: the API server's own audience
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
            }
        }
        answer = self.core.create_namespaced_service_account_token(
            service_account, namespace, body, _preload_content=False
        )
        return str(json.loads(answer.data)["status"]["token"])

    # -- pods ------------------------------------------------------------------------------------------------
    def patch_pod_status(self, key: tuple[str, str], status: dict) -> bool:
        """True when the API server took it; a refused patch is logged (and retried on the next change)."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = key
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status})
            return True
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s %s", namespace, name, exc.reason, (exc.body or "")[:600])
            return False

    def delete_pod(self, key: tuple[str, str], uid: str) -> None:
        """What the kubelet does once the containers are gone: delete with grace 0, only this incarnation."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        namespace, name = key
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # -- nodes -----------------------------------------------------------------------------------------------
    def patch_node_status(self, node: str, status: dict) -> None:
        """A strategic merge of the node's status (conditions and addresses merge by type)."""
        self.core.patch_node_status(node, {"status": status})

    def renew_lease(self, node: str, uid: str, duration_s: int) -> None:
        """The node's Lease in kube-node-lease (created, owned by the Node, on first renewal)."""
        from kubernetes.client.exceptions import ApiException

        # MicroTime: the client turns date-like strings into datetimes and back, dropping a zero fraction that
        # the API server then refuses; a datetime with a nonzero microsecond survives the round trip.
        stamp = datetime.datetime.now(datetime.UTC)
        now = stamp.replace(microsecond=stamp.microsecond or 1)
        spec = {"holderIdentity": node, "leaseDurationSeconds": duration_s, "renewTime": now}
        try:
            self.coord.patch_namespaced_lease(node, NODE_LEASE_NAMESPACE, {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            body: Any = {  # the client takes plain dicts for its models
                "metadata": {
                    "name": node,
                    "namespace": NODE_LEASE_NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}],
                },
                "spec": spec,
            }
            self.coord.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)
