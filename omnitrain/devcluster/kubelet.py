"""The kubelet's HTTPS endpoint as far as `kubectl logs [-f]` needs it: `GET /containerLogs/{ns}/{pod}/{container}`
with `follow`, `tailLines` and `limitBytes`.

How the API server gets here: for `pods/log` it dials the pod's node at the first address of the types in
`--kubelet-preferred-address-types` (InternalIP 127.0.0.1 for a local node; the default would take the Hostname,
`local-node-1`, which nothing resolves) and the port in `status.daemonEndpoints.kubeletEndpoint`, which the agent
posts for every node it manages: one agent serves all local nodes, so they share one port. The API server checks
this server's certificate against the cluster CA (`--kubelet-certificate-authority`) and presents its kubelet client
certificate. That client is the only one accepted: a real kubelet asks the API server (a SubjectAccessReview of
`nodes/proxy`) whether the caller may; here only the API server holds a certificate for KUBELET_CLIENT_USER, and
the API server has authorised the user's `pods/log` request before it dials.

Not served (refused with 400 and a message, never silently ignored): `timestamps` (the shims write the output as
it comes, without a time per line), `previous` (restarts of a container append to one log), `sinceSeconds` /
`sinceTime`. The pod is found by namespace and name in the agent's folders (runtime.py): only pods of local nodes.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from omnitrain.devcluster import runtime
from omnitrain.devcluster.certs import KUBELET_CLIENT_USER, ClusterPKI

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
FOLLOW_POLL_S = 0.2  # how often a followed log is checked for new output
SOCKET_TIMEOUT_S = 30.0  # a client that stalls the handshake, the request or the reading of the stream is dropped
UNSUPPORTED = {
    "timestamps": "the local node agent records no time per line; drop --timestamps",
    "previous": "a restarted container appends to the same log here; drop --previous (the log has every run)",
    "sinceSeconds": "the local node agent records no time per line; use --tail instead of --since",
    "sinceTime": "the local node agent records no time per line; use --tail instead of --since-time",
}


class LogRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LogRequest:
    namespace: str
    pod: str
    container: str
    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None


def _true(values: list[str]) -> bool:
    return values[-1].lower() in ("true", "1")


def _count(query: dict[str, list[str]], name: str, low: int) -> int | None:
    if name not in query:
        return None
    text = query[name][-1]
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise LogRequestError(400, f"{name}: {text!r} is not an integer >= {low}")
    return value


def parse_log_request(target: str) -> LogRequest:
    """The request line's target -> what to send; LogRequestError(404|400) for another path or an option this
    endpoint cannot honour (UNSUPPORTED), naming it and what to do instead."""
    url = urlsplit(target)
    parts = [unquote(p) for p in url.path.split("/")]
    if len(parts) != 5 or parts[0] or parts[1] != "containerLogs" or not all(parts[2:]) or ".." in parts:
        raise LogRequestError(
            404, f"{url.path}: this endpoint serves only /containerLogs/<namespace>/<pod>/<container>"
        )
    query = parse_qs(url.query)
    for name, fix in UNSUPPORTED.items():
        if name in query and (name.startswith("since") or _true(query[name])):
            raise LogRequestError(400, f"{name} is not supported by the local node agent: {fix}")
    return LogRequest(
        namespace=parts[2],
        pod=parts[3],
        container=parts[4],
        follow="follow" in query and _true(query["follow"]),
        tail_lines=_count(query, "tailLines", 0),
        limit_bytes=_count(query, "limitBytes", 1),
    )


def tail_offset(f: BinaryIO, lines: int) -> int:
    """Offset in the file `f` where its last `lines` lines start (an unfinished last line counts as one), read
    backwards block by block so a long log is not read whole."""
    end = f.seek(0, os.SEEK_END)
    if lines == 0 or end == 0:
        return end
    f.seek(end - 1)
    # a newline at the very end closes the last line; it does not start another one
    wanted = lines + (f.read(1) == b"\n")
    pos = end
    while pos > 0:
        start = max(0, pos - CHUNK)
        f.seek(start)
        block = f.read(pos - start)
        count = block.count(b"\n")
        if count >= wanted:
            index = len(block)
            for _ in range(wanted):
                index = block.rindex(b"\n", 0, index)
            return start + index + 1
        wanted -= count
        pos = start
    return 0


def stream_log(
    f: BinaryIO,
    request: LogRequest,
    write: Callable[[bytes], Any],
    exited: Callable[[], bool],
    wait: Callable[[float], bool],
) -> int:
    """Writes the log from `f` as the request asks; returns the bytes written. With follow it keeps writing what
    the container appends until the container has exited and everything it wrote is sent, or `wait` says to stop
    (the client went away, the agent stops)."""
    if request.tail_lines is not None:
        f.seek(tail_offset(f, request.tail_lines))
    budget = request.limit_bytes
    sent = 0
    while True:
        # asked before reading: once the container has exited, an empty read means all of its output went out
        done = not request.follow or exited()
        chunk = f.read(CHUNK if budget is None else min(CHUNK, budget - sent))
        if chunk:
            write(chunk)
            sent += len(chunk)
            if budget is not None and sent >= budget:
                return sent
            continue
        if done or wait(FOLLOW_POLL_S):
            return sent


def peer_user(cert: dict | None) -> str:
    """The CN of a verified client certificate (ssl's getpeercert() form); "" without one."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


class _LogHandler(BaseHTTPRequestHandler):
    server: KubeletServer
    connection: ssl.SSLSocket

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        if peer_user(self.connection.getpeercert()) != KUBELET_CLIENT_USER:
            return self._error(403, f"only the API server ({KUBELET_CLIENT_USER}) may read logs here")
        try:
            request = parse_log_request(self.path)
        except LogRequestError as exc:
            return self._error(exc.status, exc.message)
        root = self.server.root
        path = runtime.container_log(root, request.namespace, request.pod, request.container)
        if not runtime.pod_dir(root, request.namespace, request.pod).is_dir():
            return self._error(404, f'pod "{request.namespace}/{request.pod}" is not run by this node agent')
        if not path.exists():
            message = f'container "{request.container}" in pod "{request.pod}" is waiting to start: ContainerCreating'
            return self._error(400, message)
        exit_file = runtime.container_dir(root, request.namespace, request.pod, request.container) / "exit.json"
        with open(path, "rb") as f:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes, as a followed log must
            try:
                stream_log(f, request, self.wfile.write, exit_file.exists, self._client_gone)
            except OSError:  # the client went away mid-stream
                pass

    def _client_gone(self, timeout_s: float) -> bool:
        """Waits up to timeout_s; True once the API server closed its side (it sends nothing after a GET) or the
        agent stops."""
        if self.server.stop.is_set() or self.connection.pending():
            return True
        readable, _, _ = select.select([self.connection], [], [], timeout_s)
        return bool(readable) or self.server.stop.is_set()

    def _error(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("kubelet endpoint: " + format, *args)


class KubeletServer(ThreadingHTTPServer):
    """Serves on 127.0.0.1 (a free port unless given); `port` is what the nodes advertise."""

    daemon_threads = True

    def __init__(self, root: Path, pki: ClusterPKI, stop: threading.Event, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _LogHandler)
        self.root = root
        self.stop = stop
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.kubelet_cert), str(pki.kubelet_key))
        context.load_verify_locations(str(pki.ca_cert))
        context.verify_mode = ssl.CERT_REQUIRED
        self.tls = context

    @property
    def port(self) -> int:
        return self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake happens on the request's own thread, so a slow client cannot hold the accept loop
        sock: socket.socket = request
        sock.settimeout(SOCKET_TIMEOUT_S)
        try:
            tls = self.tls.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("kubelet endpoint: TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("kubelet endpoint: request from %s failed", client_address, exc_info=True)
