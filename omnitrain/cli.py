"""The `omnitrain` command. Each area registers its own subcommands in its `cli.py`; imports stay lazy so that
`omnitrain operator` never loads torch and `omnitrain train` never loads kopf."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module with a `register(subparsers)` function) in the order they appear in --help.
COMMAND_MODULES = (
    "omnitrain.devcluster.cli",  # dev up|down|status
    "omnitrain.operator.cli",  # operator, crd, validate
    "omnitrain.trainer.cli",  # train, data, checkpoint
    "omnitrain.resilience.cli",  # watchdog
    "omnitrain.observability.cli",  # status, report
    "omnitrain.serving.cli",  # serve
    "omnitrain.trainer.distill.cli",  # distill
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnitrain", description="Train, run and serve video DiTs on Kubernetes (see README.md)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
