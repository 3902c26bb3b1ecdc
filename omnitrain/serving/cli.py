"""Subcommands of this area (registered by omnitrain.cli): `omnitrain serve`."""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from omnitrain.serving.engine import InferenceEngine
    from omnitrain.serving.server import InferenceServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = InferenceEngine(args.checkpoint, fp8=not args.no_fp8, config_path=args.config)
    server = InferenceServer(
        engine, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000
    )

    def stop(*_):
        raise KeyboardInterrupt  # SIGTERM (pod deletion) ends serve_forever like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    print(f"omnitrain serve: listening on {args.host}:{server.port}, loading {args.checkpoint}", flush=True)
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
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--no-fp8", action="store_true", help="keep linear layers in fp32/bf16")
    p.add_argument("--max-batch", type=int, default=8, help="requests per model batch")
    p.add_argument("--max-wait-ms", type=float, default=20, help="how long a request waits for others to batch")
    p.set_defaults(func=_serve)
