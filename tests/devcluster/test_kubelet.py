"""The agent's kubelet endpoint without a cluster: request parsing, tail/limit/follow, who may call it (TLS with
the cluster's PKI), and what the nodes advertise so the API server can dial it."""

from __future__ import annotations

import http.client
import io
import json
import ssl
import threading
from pathlib import Path

import pytest

from omnitrain.devcluster import runtime
from omnitrain.devcluster.certs import ensure_pki
from omnitrain.devcluster.kubelet import (
    KubeletServer,
    LogRequest,
    LogRequestError,
    parse_log_request,
    peer_user,
    stream_log,
    tail_offset,
)
from omnitrain.devcluster.nodes import node_status_patch


def test_parse_log_request():
    req = parse_log_request("/containerLogs/ns/pod-a/main?follow=true&tailLines=10&limitBytes=5")
    assert req == LogRequest("ns", "pod-a", "main", follow=True, tail_lines=10, limit_bytes=5)
    assert parse_log_request("/containerLogs/ns/p/c") == LogRequest("ns", "p", "c")
    assert parse_log_request("/containerLogs/ns/p/c?timestamps=false").follow is False


@pytest.mark.parametrize(
    ("target", "status", "words"),
    [
        ("/pods", 404, "only /containerLogs"),
        ("/containerLogs/ns/p", 404, "only /containerLogs"),
        ("/containerLogs/ns/%2E%2E/c", 404, "only /containerLogs"),
        ("/containerLogs/ns/p/c?tailLines=-1", 400, "tailLines: '-1'"),
        ("/containerLogs/ns/p/c?limitBytes=x", 400, "limitBytes: 'x'"),
        ("/containerLogs/ns/p/c?timestamps=true", 400, "drop --timestamps"),
        ("/containerLogs/ns/p/c?previous=true", 400, "drop --previous"),
        ("/containerLogs/ns/p/c?sinceSeconds=5", 400, "use --tail"),
    ],
)
def test_parse_log_request_refuses_with_the_reason(target, status, words):
    with pytest.raises(LogRequestError) as err:
        parse_log_request(target)
    assert err.value.status == status and words in err.value.message


@pytest.mark.parametrize(
    ("data", "lines", "expected"),
    [
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 1, b"c"),  # an unfinished last line counts
        (b"a\nb\n", 5, b"a\nb\n"),
        (b"a\nb\n", 0, b""),
        (b"", 3, b""),
        (b"x" * 200_000 + b"\nlast\n", 1, b"last\n"),  # across blocks
        (b"x" * 200_000 + b"\nlast\n", 2, b"x" * 200_000 + b"\nlast\n"),
    ],
)
def test_tail_offset(data, lines, expected):
    f = io.BytesIO(data)
    assert data[tail_offset(f, lines) :] == expected


def test_stream_without_follow_honours_tail_and_limit():
    out = io.BytesIO()
    sent = stream_log(io.BytesIO(b"one\ntwo\nthree\n"), LogRequest("n", "p", "c", tail_lines=2), out.write, *_never)
    assert (sent, out.getvalue()) == (10, b"two\nthree\n")
    out = io.BytesIO()
    stream_log(io.BytesIO(b"one\ntwo\n"), LogRequest("n", "p", "c", limit_bytes=5), out.write, *_never)
    assert out.getvalue() == b"one\nt"


_never = (lambda: False, lambda timeout: pytest.fail("no wait without follow"))


def test_follow_sends_what_comes_later_until_the_container_exited(tmp_path):
    log = tmp_path / "main.log"
    log.write_bytes(b"first\n")
    state = {"waits": 0, "exited": False}

    def wait(timeout_s: float) -> bool:
        # the container writes while the stream waits; the second wait sees it write its last line and exit
        state["waits"] += 1
        with log.open("ab") as f:
            f.write(b"second\n" if state["waits"] == 1 else b"last\n")
        state["exited"] = state["waits"] >= 2
        return False

    out = io.BytesIO()
    with log.open("rb") as f:
        stream_log(f, LogRequest("n", "p", "c", follow=True), out.write, lambda: state["exited"], wait)
    assert out.getvalue() == b"first\nsecond\nlast\n"


def test_follow_ends_when_the_client_goes_away(tmp_path):
    out = io.BytesIO()
    stream_log(io.BytesIO(b"x\n"), LogRequest("n", "p", "c", follow=True), out.write, lambda: False, lambda t: True)
    assert out.getvalue() == b"x\n"


def test_peer_user():
    cert = {"subject": ((("organizationName", "g"),), (("commonName", "kube-apiserver-kubelet-client"),))}
    assert peer_user(cert) == "kube-apiserver-kubelet-client"
    assert peer_user(None) == "" and peer_user({}) == ""


def test_node_status_carries_address_and_kubelet_port():
    status = node_status_patch("local-node-1", "2026-12-01T00:00:00Z", 4321)
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 4321}}  # the API's field is spelled Port
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["conditions"][0]["type"] == "Ready" and status["conditions"][0]["status"] == "True"


def test_control_plane_dials_local_nodes_by_ip_with_the_agents_pki(tmp_path):
    from omnitrain.devcluster.controlplane import ControlPlane, Ports

    cp = ControlPlane(tmp_path, Path("/bin"))
    apiserver = cp._apiserver_argv(Ports(1, 2, 3, 4, 5))
    assert "--kubelet-preferred-address-types=InternalIP,Hostname" in apiserver
    assert f"--kubelet-certificate-authority={cp.pki.ca_cert}" in apiserver
    controllers = next(a for a in cp._controller_manager_argv(Ports(1, 2, 3, 4, 5)) if a.startswith("--controllers="))
    assert "-endpoints-controller" in controllers and "-endpointslice-controller" in controllers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A KubeletServer over a cluster folder with one pod's log, and the PKI it trusts."""
    root = tmp_path_factory.mktemp("kubelet")
    pki = ensure_pki(root / "pki")
    log = runtime.container_log(root, "ns", "pod-a", "main")
    log.parent.mkdir(parents=True)
    log.write_text("hello\nworld\n")
    exit_dir = runtime.container_dir(root, "ns", "pod-a", "main")
    exit_dir.mkdir(parents=True)
    (exit_dir / "exit.json").write_text(json.dumps({"exitCode": 0}))
    stop = threading.Event()
    server = KubeletServer(root, pki, stop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, pki
    stop.set()
    server.shutdown()
    server.server_close()


def _get(server, pki, path: str, client: str | None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))  # also checks the serving cert names 127.0.0.1
    if client:
        context.load_cert_chain(*(str(p) for p in pki.client(client)))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_server_serves_the_api_servers_client_only(served):
    server, pki = served
    assert _get(server, pki, "/containerLogs/ns/pod-a/main?tailLines=1", "apiserver-kubelet-client") == (
        200,
        "world\n",
    )
    # follow on an exited container: everything, then the stream ends
    assert _get(server, pki, "/containerLogs/ns/pod-a/main?follow=true", "apiserver-kubelet-client") == (
        200,
        "hello\nworld\n",
    )
    status, body = _get(server, pki, "/containerLogs/ns/pod-a/main", "admin")
    assert status == 403 and "kube-apiserver-kubelet-client" in body
    status, body = _get(server, pki, "/containerLogs/ns/nope/main", "apiserver-kubelet-client")
    assert status == 404 and 'pod "ns/nope" is not run by this node agent' in body
    status, body = _get(server, pki, "/containerLogs/ns/pod-a/other", "apiserver-kubelet-client")
    assert status == 400 and "waiting to start" in body
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(server, pki, "/containerLogs/ns/pod-a/main", None)  # no client certificate: no handshake
