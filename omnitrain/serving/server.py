"""The HTTP server of `omnitrain serve` (stdlib ThreadingHTTPServer; one thread per connection, one batch worker).

GET /healthz   200 while the process serves HTTP (liveness)
GET /readyz    200 once the model is loaded, 503 before (readiness: the Service routes only to loaded pods)
GET /metrics   Prometheus text
POST /v1/generate   GenerateRequest JSON -> latent video (shape, stats, optionally the latent as npy/base64)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from omnitrain.serving.api import GenerateRequest
from omnitrain.serving.batching import BatchQueue
from omnitrain.serving.engine import InferenceEngine, RequestError

log = logging.getLogger(__name__)
MAX_BODY = 64 << 20


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
    ):
        self.engine = engine
        self.request_timeout_s = request_timeout_s
        self.queue = BatchQueue(engine.run_batch, max_batch=max_batch, max_wait_s=max_wait_s)
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True

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

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # access log through logging, not stderr
                log.debug("%s " + fmt, self.address_string(), *args)

            def _send(self, code: int, payload: bytes, content_type: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, code: int, obj) -> None:
                self._send(code, json.dumps(obj).encode())

            def do_GET(self):
                engine = server.engine
                if self.path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif self.path == "/readyz":
                    if engine.loaded.is_set():
                        self._json(200, {"status": "ready", "checkpoint": engine.checkpoint, "fp8": engine.fp8})
                    else:
                        self._json(
                            503, {"status": "failed" if engine.load_error else "loading", "error": engine.load_error}
                        )
                elif self.path == "/metrics":
                    self._send(200, generate_latest(engine.metrics.registry), CONTENT_TYPE_LATEST)
                else:
                    self._json(404, {"error": f"no route {self.path}"})

            def do_POST(self):
                if self.path != "/v1/generate":
                    self._json(404, {"error": f"no route {self.path}"})
                    return
                started = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    code, obj = 413, {"error": f"body of {length} bytes exceeds {MAX_BODY}"}
                else:
                    try:
                        code, obj = server._generate(self.rfile.read(length))
                    except Exception as e:  # a failed batch: the client learns why, the server lives on
                        log.exception("generate failed")
                        code, obj = 500, {"error": f"{type(e).__name__}: {e}"}
                server.engine.metrics.requests.labels(code=str(code)).inc()
                if code == 200:
                    server.engine.metrics.latency.observe(time.monotonic() - started)
                self._json(code, obj)

        return Handler


__all__ = ["InferenceServer"]
