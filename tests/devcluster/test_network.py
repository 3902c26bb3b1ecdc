"""Without cluster DNS, a headless-Service pod name in env/args is rewritten to that pod's loopback IP, and pods
talk to each other over TCP on their own addresses."""

from __future__ import annotations

import uuid

import pytest

from omnitrain.devcluster.testing import wait_pod_phase

pytestmark = pytest.mark.e2e

SERVER = """
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["POD_IP"], 29500)); s.listen(1)
conn, peer = s.accept()
print("got", conn.recv(100).decode(), "from", peer[0], flush=True)
"""

CLIENT = """
import os, socket, sys, time
deadline = time.monotonic() + 60
while True:  # the server may not listen yet: retry the connection with a deadline
    try:
        c = socket.create_connection((os.environ["MASTER_ADDR"], 29500), timeout=2); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.1)
c.sendall(sys.argv[1].encode()); print("master", os.environ["MASTER_ADDR"], flush=True)
"""


def test_headless_dns_name_rewritten_and_pods_talk(local_cluster):
    from kubernetes import client

    core = client.CoreV1Api(local_cluster.api_client())
    tag = uuid.uuid4().hex[:6]
    sub, server, talker = f"job-{tag}", f"rank0-{tag}", f"rank1-{tag}"
    core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": sub},
            "spec": {"clusterIP": "None", "selector": {"job": tag}, "ports": [{"port": 29500}]},
        },
    )
    pod_ip_env = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": server, "labels": {"job": tag}},
            "spec": {
                "hostname": server,
                "subdomain": sub,
                "restartPolicy": "Never",
                "containers": [
                    {"name": "main", "image": "x", "command": ["python", "-c", SERVER], "env": [pod_ip_env]}
                ],
            },
        },
    )
    dns = f"{server}.{sub}.default.svc.cluster.local"
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": talker, "labels": {"job": tag}},
            "spec": {
                "hostname": talker,
                "subdomain": sub,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "x",
                        "command": ["python", "-c", CLIENT],
                        "args": [f"hello-from-{talker}"],
                        "env": [{"name": "MASTER_ADDR", "value": dns}, pod_ip_env],
                    }
                ],
            },
        },
    )
    server_pod = wait_pod_phase(core, "default", server, {"Succeeded", "Failed"})
    talker_pod = wait_pod_phase(core, "default", talker, {"Succeeded", "Failed"})
    server_log = local_cluster.container_log("default", server, "main").read_text()
    talker_log = local_cluster.container_log("default", talker, "main").read_text()
    assert (server_pod.status.phase, talker_pod.status.phase) == ("Succeeded", "Succeeded"), server_log + talker_log
    assert f"master {server_pod.status.pod_ip}" in talker_log
    assert f"got hello-from-{talker} from" in server_log
    assert server_pod.status.pod_ip != talker_pod.status.pod_ip


def test_dns_rewrite_pattern():
    from omnitrain.devcluster.podspec import rewrite_dns_names

    ips = {("a", "s", "ns"): "127.1.0.5"}
    resolve = lambda h, s, n: ips[(h, s, n)]  # noqa: E731
    assert rewrite_dns_names("tcp://a.s.ns.svc.cluster.local:29500", resolve) == "tcp://127.1.0.5:29500"
    assert rewrite_dns_names("a.s.ns.svc", resolve) == "127.1.0.5"
    assert rewrite_dns_names("x=a.s.ns.svc:1,b", resolve) == "x=127.1.0.5:1,b"
    # a Service name (two labels) and look-alikes are left alone
    assert rewrite_dns_names("svc1.ns.svc", resolve) == "svc1.ns.svc"
    assert rewrite_dns_names("a.s.ns.svcx", resolve) == "a.s.ns.svcx"
