"""Subcommands of this area (registered by omnitrain.cli)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands; imports of heavy modules happen inside the handlers."""
    op = subparsers.add_parser("operator", help="run the OmniTrainingJob operator (kopf)")
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(func=_operator)
    c = subparsers.add_parser("crd", help="print the OmniTrainingJob CRD (YAML)")
    c.set_defaults(func=_crd)
    v = subparsers.add_parser("validate", help="check an OmniTrainingJob manifest like the operator does")
    v.add_argument("file", help="YAML file with an OmniTrainingJob (or a bare spec)")
    v.add_argument(
        "--allowed-host-root",
        action="append",
        metavar="DIR",
        help=(
            "a folder checkpoint.localPath may be in, as the operator's OMNITRAIN_ALLOWED_HOST_ROOTS says "
            "(repeat for more; default: that variable here, else /mnt and /var/lib/omnitrain)"
        ),
    )
    v.set_defaults(func=_validate)


def _operator(args: argparse.Namespace) -> int:
    from omnitrain.operator.run import run_operator

    return run_operator(verbose=args.verbose)


def _crd(args: argparse.Namespace) -> int:
    from omnitrain.operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _validate(args: argparse.Namespace) -> int:
    import yaml

    from omnitrain.operator.reconcile import parse_spec
    from omnitrain.operator.settings import allowed_host_roots, checked_host_roots

    try:
        given = args.allowed_host_root
        roots = checked_host_roots(given, "--allowed-host-root") if given else allowed_host_roots()
    except ValueError as exc:  # a root the operator would refuse to start with
        print(f"omnitrain validate: {exc}", file=sys.stderr)
        return 2
    try:
        with open(args.file) as f:
            docs = list(yaml.safe_load_all(f))
    except OSError as exc:  # a person typed the path: say what is wrong with it, no traceback
        print(f"omnitrain validate: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        print(f"omnitrain validate: {args.file} is not YAML: {exc}", file=sys.stderr)
        return 2
    bad = 0
    for doc in docs:
        if not isinstance(doc, dict):
            if doc:
                print(f"{args.file}: a document is not a mapping (an OmniTrainingJob or a bare spec)", file=sys.stderr)
                bad += 1
            continue
        spec = doc.get("spec", doc) if doc.get("kind", "OmniTrainingJob") == "OmniTrainingJob" else None
        if spec is None:
            continue
        job_name = (doc.get("metadata") or {}).get("name")
        name = job_name or args.file
        _, problems = parse_spec(spec, job_name if isinstance(job_name, str) else None, roots)
        for p in problems:
            print(f"{name}: {p}", file=sys.stderr)
        bad += bool(problems)
        if not problems:
            print(f"{name}: valid")
    return 1 if bad else 0
