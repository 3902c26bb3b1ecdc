"""The HTTP server of `omnitrain serve` (stdlib ThreadingHTTPServer; one thread per connection, one batch worker).

One client cannot hold it open or crash it: every socket read times out (`read_timeout_s`, which also closes idle
keep-alive connections), the body must arrive within the same time, at most `max_connections` connections are served
at once (beyond that a 503 and the connection closed), and Content-Length is parsed before anything is read (400 for a
non-integer or negative value, 413 beyond MAX_BODY).

GET /healthz   200 while the process serves HTTP (liveness)
GET /readyz    200 once the model is loaded, 503 before (readiness: the Service routes only to loaded pods); its
               conditionCache says whether the cached condition keys/values compute the model as trained
GET /metrics   Prometheus text
GET /openapi.json   the OpenAPI document (omnitrain/serving/openapi.py)
POST /v1/generate   GenerateRequest JSON -> latent video (shape, stats, optionally the latent as npy/base64)
POST /v1/videos     VideoRequest JSON (a prompt, base64 reference images / context clip), or the same fields as
                    multipart/form-data with files -> video/mp4 (or JSON with the latent), through the job's encoders
                    (models trained with spec.data.encoders)
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from omnitrain.serving.api import GenerateRequest, VideoRequest, encode_array
from omnitrain.serving.batching import BatchQueue
from omnitrain.serving.engine import InferenceEngine, RequestError
from omnitrain.serving.multipart import MultipartError, form_to_request, is_multipart
from omnitrain.serving.openapi import openapi_document

log = logging.getLogger(__name__)
MAX_BODY = 64 << 20
_READ_CHUNK = 1 << 16


class BodyError(Exception):
    """A request body the server refuses; `code` is the HTTP status to answer with."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def parse_content_length(value: str | None, limit: int = MAX_BODY) -> int:
    """The body length a request announces, or BodyError naming the header and the fix."""
    if value is None or not value.strip():
        return 0
    text = value.strip()
    # int() alone would accept "+5", " 5" and "1_000"; HTTP allows digits only (RFC 9110 8.6)
    if not text.isascii() or not text.isdigit():
        raise BodyError(400, f"Content-Length: {value!r} is not a non-negative integer; send the body's size in bytes")
    length = int(text)
    if length > limit:
        raise BodyError(413, f"Content-Length: body of {length} bytes exceeds {limit}; send a smaller request")
    return length


def read_body(rfile, length: int, deadline: float) -> bytes:
    """Exactly `length` bytes, in chunks, or BodyError if the client closes early or the deadline passes.

    Each read is bounded by the socket timeout; the deadline bounds a client that trickles a byte per timeout."""
    chunks: list[bytes] = []
    left = length
    while left > 0:
        if time.monotonic() > deadline:
            raise BodyError(408, f"request body not received in time ({length - left} of {length} bytes)")
        try:
            chunk = rfile.read1(min(left, _READ_CHUNK))
        except TimeoutError:
            chunk = None
        if chunk is None:
            raise BodyError(408, f"request body not received in time ({length - left} of {length} bytes)")
        if not chunk:
            raise BodyError(400, f"request body ended after {length - left} of {length} bytes (Content-Length)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


OPENAPI = openapi_document()
_BUSY = json.dumps({"error": "too many connections; retry later"}).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most `max_connections` handler threads; beyond them a 503 and close."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        # in the accept loop: a short timeout so that a client that does not read cannot stall accepting
        try:
            request.settimeout(1.0)
            request.sendall(_BUSY_RESPONSE)
        except OSError:
            pass
        self.shutdown_request(request)


def _validation_message(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())


class InferenceServer:
    def __init__(
        self,
        engine: InferenceEngine,
        host: str = "0.0.0.0",
        port: int = 8080,
        max_batch: int = 8,
        max_wait_s: float = 0.02,
        request_timeout_s: float = 600,
        read_timeout_s: float = 30,
        max_connections: int = 64,
    ):
        self.engine = engine
        self.request_timeout_s = request_timeout_s
        self.read_timeout_s = read_timeout_s
        self.queue = BatchQueue(engine.run_batch, max_batch=max_batch, max_wait_s=max_wait_s)
        self.httpd = _BoundedHTTPServer((host, port), self._handler_class(), max_connections)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start_loading(self) -> threading.Thread:
        t = threading.Thread(target=self.engine.load, name="model-load", daemon=True)
        t.start()
        return t

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.queue.close()

    def _generate(self, body: bytes) -> tuple[int, dict]:
        engine = self.engine
        if not engine.loaded.is_set():
            return 503, {"error": engine.load_error or "model is loading; retry when /readyz answers 200"}
        try:
            req = GenerateRequest.model_validate_json(body)
            prepared = engine.prepare(req)
        except ValidationError as e:
            return 400, {"error": _validation_message(e)}
        except RequestError as e:
            return 400, {"error": str(e)}
        result = self.queue.submit(prepared.batch_key, prepared).result(timeout=self.request_timeout_s)
        return 200, result

    def _video(self, body: bytes, content_type: str | None = None) -> tuple[int, dict | bytes]:
        engine = self.engine
        if not engine.loaded.is_set():
            return 503, {"error": engine.load_error or "model is loading; retry when /readyz answers 200"}
        try:
            if is_multipart(content_type):
                assert content_type is not None
                req = VideoRequest.model_validate(form_to_request(body, content_type))
            else:
                req = VideoRequest.model_validate_json(body)
            prepared = engine.prepare_video(req)
        except ValidationError as e:
            return 400, {"error": _validation_message(e)}
        except (RequestError, MultipartError) as e:
            return 400, {"error": str(e)}
        result = self.queue.submit(prepared.batch_key, prepared).result(timeout=self.request_timeout_s)
        latent = result.pop("latent_tensor")
        if req.response == "latent":
            return 200, {**result, "latent": encode_array(latent)}
        assert engine.media is not None
        return 200, engine.media.to_mp4(latent, req.fps)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.read_timeout_s  # StreamRequestHandler sets it on the socket: every read is bounded

            def log_message(self, fmt, *args):  # access log through logging, not stderr
                log.debug("%s " + fmt, self.address_string(), *args)

            def _send(
                self, code: int, payload: bytes, content_type: str = "application/json", close: bool = False
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                if close:  # the rest of the request was not read: the connection cannot carry another one
                    self.close_connection = True
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, code: int, obj, close: bool = False) -> None:
                self._send(code, json.dumps(obj).encode(), close=close)

            def do_GET(self):
                engine = server.engine
                if self.path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif self.path == "/readyz":
                    if engine.loaded.is_set():
                        cache = engine.cache
                        self._json(
                            200,
                            {
                                "status": "ready",
                                "checkpoint": engine.checkpoint,
                                "fp8": engine.fp8,
                                "conditionCache": {
                                    "exact": cache.exact if cache else None,
                                    "reason": cache.reason if cache else None,
                                },
                            },
                        )
                    else:
                        self._json(
                            503, {"status": "failed" if engine.load_error else "loading", "error": engine.load_error}
                        )
                elif self.path == "/openapi.json":
                    self._json(200, OPENAPI)
                elif self.path == "/metrics":
                    self._send(200, generate_latest(engine.metrics.registry), CONTENT_TYPE_LATEST)
                else:
                    self._json(404, {"error": f"no route {self.path}"})

            def do_POST(self):
                if self.path not in ("/v1/generate", "/v1/videos"):
                    self._json(404, {"error": f"no route {self.path}"})
                    return
                started = time.monotonic()
                try:
                    length = parse_content_length(self.headers.get("Content-Length"))
                    body = read_body(self.rfile, length, deadline=started + server.read_timeout_s)
                except BodyError as e:
                    server.engine.metrics.requests.labels(code=str(e.code)).inc()
                    self._json(e.code, {"error": str(e)}, close=True)
                    return
                try:
                    if self.path == "/v1/generate":
                        code, obj = server._generate(body)
                    else:
                        code, obj = server._video(body, self.headers.get("Content-Type"))
                except Exception as e:  # a failed batch: the client learns why, the server lives on
                    log.exception("%s failed", self.path)
                    code, obj = 500, {"error": f"{type(e).__name__}: {e}"}
                server.engine.metrics.requests.labels(code=str(code)).inc()
                if code == 200:
                    server.engine.metrics.latency.observe(time.monotonic() - started)
                if isinstance(obj, bytes):
                    self._send(code, obj, "video/mp4")
                else:
                    self._json(code, obj)

        return Handler


__all__ = ["BodyError", "InferenceServer", "parse_content_length", "read_body"]
