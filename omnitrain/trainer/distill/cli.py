"""`omnitrain distill`: registered by omnitrain.cli."""

from __future__ import annotations

import argparse


def _distill(args: argparse.Namespace) -> int:
    import sys

    import yaml
    from pydantic import ValidationError

    from omnitrain.contract import ExitCode
    from omnitrain.spec import TrainerConfig

    try:
        with open(args.config) as f:
            config = TrainerConfig.model_validate(yaml.safe_load(f))
    except (OSError, ValidationError, yaml.YAMLError) as e:
        print(f"omnitrain distill: bad config {args.config}: {e}", file=sys.stderr)
        return ExitCode.CONFIG

    from omnitrain.trainer.distill.run import DistillConfigError, run_distill

    try:
        run_distill(config, teacher=args.teacher, out=args.out)
    except (DistillConfigError, FileNotFoundError, FileExistsError) as e:
        print(f"omnitrain distill: {e}", file=sys.stderr)
        return ExitCode.CONFIG
    return ExitCode.OK


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("distill", help="distil the job's final checkpoint into a few-step student")
    p.add_argument("--config", required=True, help="trainer config (YAML/JSON) with spec.promotion.distill")
    p.add_argument("--teacher", help="teacher model file or checkpoint step folder (default: the job's final one)")
    p.add_argument("--out", help="where to write the student (default: <persistentPath>/<job>/promotion/student.pt)")
    p.set_defaults(func=_distill)
