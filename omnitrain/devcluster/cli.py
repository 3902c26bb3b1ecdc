"""`omnitrain dev ...`: the local cluster (up, down, status, logs, node add|delete, agent)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT_HELP = "cluster folder (default <repo>/.dev/cluster)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands; imports of heavy modules happen inside the handlers."""
    dev = subparsers.add_parser("dev", help="local Kubernetes cluster for development and tests")
    dev.add_argument("--root", type=Path, default=None, metavar="DIR", help=ROOT_HELP)
    # `dev up --root X` as well as `dev --root X up`: each action takes it too (its own dest: see cluster_root)
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", dest="action_root", type=Path, default=None, metavar="DIR", help=ROOT_HELP)
    sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")

    def action(parent: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[root], **kwargs)

    up = action(sub, "up", help="start (or resume) the cluster; idempotent")
    up.add_argument("--nodes", type=int, default=2, help="local nodes run by the node agent (default 2)")
    up.add_argument("--gpus-per-node", type=int, default=2, help="nvidia.com/gpu per local node (default 2)")
    up.add_argument("--kwok-nodes", type=int, default=0, help="fake 8-GPU nodes simulated by kwok (default 0)")
    up.add_argument(
        "--kueue",
        metavar="NAMESPACE",
        nargs="*",
        default=None,
        help="also run Kueue (built once), with a ClusterQueue of every local GPU and LocalQueue 'omnitrain' in "
        "each NAMESPACE (default: default)",
    )
    up.set_defaults(func=_up)

    action(sub, "down", help="stop every process of the cluster (state is kept)").set_defaults(func=_down)
    action(sub, "status", help="processes, API server readiness and nodes").set_defaults(func=_status)

    logs = action(sub, "logs", help="print a pod's container log")
    logs.add_argument("pod")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container", default=None, help="container (default: the only/first one)")
    logs.set_defaults(func=_logs)

    node = sub.add_parser("node", help="add or delete a local node (deleting one kills its pods: a lost machine)")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    add = action(node_sub, "add")
    add.add_argument("name")
    add.add_argument("--gpus", type=int, default=2)
    add.set_defaults(func=_node_add)
    delete = action(node_sub, "delete")
    delete.add_argument("name")
    delete.set_defaults(func=_node_delete)

    agent = action(sub, "agent", help="run the node agent in the foreground (normally started by `dev up`)")
    agent.set_defaults(func=_agent)


def cluster_root(args: argparse.Namespace) -> Path | None:
    """--root before the action or after it (None: the default folder); both, naming two folders, is refused."""
    before, after = args.root, getattr(args, "action_root", None)
    if before and after and Path(before).resolve() != Path(after).resolve():
        raise SystemExit(f"omnitrain dev: --root given twice ({before} and {after}); give it once")
    return after or before


def _cluster(args):
    from omnitrain.devcluster.cluster import DEFAULT_ROOT, LocalCluster

    return LocalCluster(cluster_root(args) or DEFAULT_ROOT)


def _validate_counts(args) -> None:
    for flag, value, low in (
        ("--nodes", args.nodes, 0),
        ("--gpus-per-node", args.gpus_per_node, 0),
        ("--kwok-nodes", args.kwok_nodes, 0),
    ):
        if value < low:
            raise SystemExit(f"omnitrain dev up: {flag} must be >= {low} (got {value})")


def _up(args) -> int:
    _validate_counts(args)
    cluster = _cluster(args).up(nodes=args.nodes, gpus_per_node=args.gpus_per_node, kwok_nodes=args.kwok_nodes)
    if args.kueue is not None:
        cluster.start_kueue(args.kueue or ["default"], gpus=args.nodes * args.gpus_per_node)
    return 0


def _down(args) -> int:
    _cluster(args).down()
    return 0


def _status(args) -> int:
    report = _cluster(args).status()
    print(json.dumps(report, indent=2))
    healthy = all(v for k, v in report["processes"].items() if k != "kwok") and report.get("apiserver", {}).get(
        "ready", False
    )
    return 0 if healthy else 1


def _logs(args) -> int:
    cluster = _cluster(args)
    folder = cluster.pod_dir(args.namespace, args.pod)
    if args.container is None:
        logs = sorted(folder.glob("*.log"))
        if not logs:
            raise SystemExit(f"no logs for pod {args.namespace}/{args.pod} under {folder} (is it on a local node?)")
        path = logs[0]
    else:
        path = cluster.container_log(args.namespace, args.pod, args.container)
        if not path.exists():
            raise SystemExit(f"no log for container {args.container!r} of {args.namespace}/{args.pod} ({path})")
    print(path.read_text(errors="replace"), end="")
    return 0


def _node_add(args) -> int:
    _cluster(args).add_node(args.name, gpus=args.gpus)
    print(f"node {args.name} added")
    return 0


def _node_delete(args) -> int:
    if not _cluster(args).delete_node(args.name):
        raise SystemExit(f"no node named {args.name!r}")
    print(f"node {args.name} deleted")
    return 0


def _agent(args) -> int:
    from omnitrain.devcluster import agent

    cluster = _cluster(args)
    return agent.main(["--root", str(cluster.root), "--kubeconfig", str(cluster.control_plane().kubeconfig("agent"))])
