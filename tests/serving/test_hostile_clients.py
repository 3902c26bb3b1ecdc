"""One client cannot hold the inference server open or crash it (issue 14, case 8).

Real sockets against a server started in the test. Every wait is bounded by a client socket timeout or a join: a
server that holds a connection makes `recv` raise TimeoutError, which fails the test instead of hanging it."""

import io
import json
import socket
import threading
import time

import pytest

from omnitrain.serving.engine import InferenceEngine
from omnitrain.serving.server import MAX_BODY, BodyError, InferenceServer, parse_content_length, read_body
from tests.serving.conftest import wait_until

CLIENT_TIMEOUT_S = 10.0


@pytest.fixture
def make_server(student_file):
    servers: list[tuple[InferenceServer, threading.Thread]] = []

    def start(**kwargs) -> InferenceServer:
        # the model stays unloaded: everything here is refused before a request reaches the engine
        srv = InferenceServer(InferenceEngine(str(student_file)), host="127.0.0.1", port=0, **kwargs)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        servers.append((srv, thread))
        return srv

    yield start
    for srv, thread in servers:
        srv.shutdown()
        thread.join(10)
        assert not thread.is_alive()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)


def _read_until_close(sock: socket.socket) -> bytes:
    """All the server sends until it closes; TimeoutError if it keeps the connection open past the client timeout."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _exchange(port: int, raw: bytes) -> bytes:
    with _connect(port) as sock:
        sock.sendall(raw)
        return _read_until_close(sock)


def _response(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _post_head(content_length: str) -> bytes:
    return (
        f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def _healthy(port: int) -> bool:
    try:
        data = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200 ")


def test_half_sent_post_is_answered_408_and_closed_within_the_read_timeout(make_server):
    srv = make_server(read_timeout_s=0.5)
    started = time.monotonic()
    data = _exchange(srv.port, _post_head("100") + b'{"text": ')  # 9 of 100 bytes, then silence
    assert time.monotonic() - started < 5
    code, body = _response(data)
    assert code == 408 and "9 of 100 bytes" in body["error"]
    assert _healthy(srv.port)


def test_silent_and_idle_connections_are_closed_after_the_read_timeout(make_server):
    srv = make_server(read_timeout_s=0.5)
    started = time.monotonic()
    assert _exchange(srv.port, b"POST /v1/gen") == b""  # a request line never finished: closed, nothing to answer
    with _connect(srv.port) as sock:  # a keep-alive connection left idle after one request
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until_close(sock).startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < 5


def test_connections_beyond_the_bound_get_503_and_the_slot_comes_back(make_server):
    srv = make_server(read_timeout_s=30, max_connections=2)
    holders = [_connect(srv.port), _connect(srv.port)]  # accepted in order: they take both slots
    try:
        code, body = _response(_exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert code == 503 and "too many connections" in body["error"]
    finally:
        holders.pop().close()
    # the closed holder's thread sees EOF and frees its slot; the server serves again, the other holder still open
    wait_until(lambda: _healthy(srv.port), timeout_s=CLIENT_TIMEOUT_S, what="a freed connection slot")
    holders[0].close()


@pytest.mark.parametrize(
    ("value", "code", "fragment"),
    [
        ("abc", 400, "Content-Length: 'abc' is not a non-negative integer"),
        ("-5", 400, "Content-Length: '-5' is not a non-negative integer"),
        ("+5", 400, "Content-Length: '+5' is not a non-negative integer"),
        (str(MAX_BODY + 1), 413, f"exceeds {MAX_BODY}"),
    ],
)
def test_bad_content_length_is_answered_and_the_server_lives_on(make_server, value, code, fragment):
    srv = make_server(read_timeout_s=5)
    got, body = _response(_exchange(srv.port, _post_head(value)))
    assert got == code and fragment in body["error"]
    assert _healthy(srv.port)


def test_parse_content_length():
    assert parse_content_length(None) == 0
    assert parse_content_length(" 12 ") == 12
    assert parse_content_length(str(MAX_BODY)) == MAX_BODY
    for bad in ("abc", "-1", "1.5", "1_000", "١٢"):
        with pytest.raises(BodyError) as e:
            parse_content_length(bad)
        assert e.value.code == 400 and "Content-Length" in str(e.value)
    with pytest.raises(BodyError) as e:
        parse_content_length("11", limit=10)
    assert e.value.code == 413


def test_read_body_is_bounded_by_length_and_deadline():
    rfile = io.BufferedReader(io.BytesIO(b"0123456789tail"))
    assert read_body(rfile, 10, deadline=time.monotonic() + 5) == b"0123456789"
    with pytest.raises(BodyError) as e:
        read_body(io.BufferedReader(io.BytesIO(b"short")), 10, deadline=time.monotonic() + 5)
    assert e.value.code == 400 and "5 of 10 bytes" in str(e.value)
    with pytest.raises(BodyError) as e:
        read_body(io.BufferedReader(io.BytesIO(b"late")), 4, deadline=time.monotonic() - 1)
    assert e.value.code == 408
