"""Start the operator: settings from the environment, Kubernetes login, kopf's loop."""

from __future__ import annotations

import asyncio
import logging


def run_operator(verbose: bool = False) -> int:
    import kopf
    from kubernetes import config

    from omnitrain.operator import handlers
    from omnitrain.operator.settings import OperatorSettings

    kopf.configure(verbose=verbose)  # kopf's log format for our lines too
    if not verbose:
        # one "Handler succeeded" line per pod event drowns the transitions (logged by kube.post_event)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        settings = OperatorSettings.from_env()
    except ValueError as exc:  # a setting that is wrong: one line naming it, not a traceback
        logging.getLogger("omnitrain.operator").error("omnitrain operator: %s", exc)
        return 2
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    elector = None
    if settings.leader_election:
        # a standby starts nothing (handlers, webhook, metrics port) until it holds the Lease
        from omnitrain.operator.leader import LeaderElector

        elector = LeaderElector(settings.leader_election)
        elector.wait_to_lead()
        elector.keep_leading()
    metrics = None
    if settings.metrics_port:
        from omnitrain.observability.operator_metrics import start_operator_metrics_server

        metrics = start_operator_metrics_server(settings.metrics_port, settings.metrics_address)
    handlers.install(settings, metrics=metrics)
    logging.getLogger("omnitrain.operator").info(
        "omnitrain operator: namespaces=%s resync=%ss command=%s allowed host roots=%s",
        settings.namespaces or "all",
        settings.resync_seconds,
        " ".join(settings.train_command),
        ",".join(settings.allowed_host_roots) or "(none)",
    )
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                standalone=settings.peering is None,
                peering_name=settings.peering,
            )
        )
    finally:
        if elector:
            elector.release()
    return 0
