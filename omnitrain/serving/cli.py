"""Subcommands of this area (registered by omnitrain.cli): `omnitrain serve`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from omnitrain import contract

DEFAULT_HOST = "0.0.0.0"


def listen_host(flag: str | None, env: Mapping[str, str] = os.environ) -> str:
    """--host if given, else $OMNITRAIN_BIND_HOST (the local node agent's pods), else every interface (a pod)."""
    return flag or env.get(contract.ENV_BIND_HOST) or DEFAULT_HOST


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from omnitrain.serving.engine import InferenceEngine
    from omnitrain.serving.server import InferenceServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = listen_host(args.host)
    engine = InferenceEngine(args.checkpoint, fp8=not args.no_fp8, config_path=args.config)
    server = InferenceServer(
        engine, host=host, port=args.port, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000
    )

    def stop(*_):
        raise KeyboardInterrupt  # SIGTERM (pod deletion) ends serve_forever like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    print(f"omnitrain serve: listening on {host}:{server.port}, loading {args.checkpoint}", flush=True)
    server.start_loading()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands; imports of heavy modules happen inside the handlers."""
    p = subparsers.add_parser("serve", help="serve a promoted (distilled) model over HTTP")
    p.add_argument("--checkpoint", required=True, help="model file, e.g. <persistentPath>/<job>/promotion/student.pt")
    p.add_argument("--config", help="trainer config; needed when --checkpoint is a training checkpoint folder")
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 0.0.0.0, every interface: right in a pod, whose network is its own, so "
        f"that its Service and probes reach it; on a machine of your own pass 127.0.0.1; ${contract.ENV_BIND_HOST} "
        "replaces the default: the local cluster's node agent sets it to the pod's loopback IP)",
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--no-fp8", action="store_true", help="keep linear layers in fp32/bf16")
    p.add_argument("--max-batch", type=int, default=8, help="requests per model batch")
    p.add_argument("--max-wait-ms", type=float, default=20, help="how long a request waits for others to batch")
    p.set_defaults(func=_serve)
