"""On the local cluster, with the kubelet's late refresh of mounted ConfigMaps emulated (60 s): a new generation
announced in `<job>-gang` reaches the pod's supervisor through its API watch while the mounted file is still the
old one. The pod is the operator's own rendering (plan.py: ServiceAccount, Role reading only that ConfigMap,
RoleBinding, projected token + CA, env), created here without an operator: the announcement is patched by hand.
The agent gives the pod what a kubelet gives (omnitrain/devcluster/launch.py: token, CA, KUBERNETES_SERVICE_*)."""

from __future__ import annotations

import dataclasses
import ssl
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from omnitrain import gang, gang_watch
from omnitrain.devcluster.pods import CONFIGMAP_SYNC_FILE
from omnitrain.devcluster.testing import wait_for
from omnitrain.operator import plan
from omnitrain.operator.reconcile import parse_spec
from omnitrain.resilience.generations import ACKED_GENERATION

pytestmark = pytest.mark.e2e
TRAINER = Path(__file__).with_name("waiting_trainer.py")
SYNC_SECONDS = 60


def _create(api, obj: dict) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    ns = obj["metadata"]["namespace"]
    create = {
        "ServiceAccount": core.create_namespaced_service_account,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
        "ConfigMap": core.create_namespaced_config_map,
        "Service": core.create_namespaced_service,
        "Pod": core.create_namespaced_pod,
    }[obj["kind"]]
    create(ns, obj)


def _generation(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _status_of(api, token_dir: Path, namespace: str, configmap: str) -> int:
    """The HTTP status of a GET of `configmap` with the pod's projected token and CA."""
    url = f"{api.configuration.host}/api/v1/namespaces/{namespace}/configmaps/{configmap}"
    token = (token_dir / gang_watch.TOKEN_FILE).read_text().strip()
    context = ssl.create_default_context(cafile=str(token_dir / gang_watch.CA_FILE))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_new_generation_reaches_the_supervisor_through_the_api_before_the_mount(local_cluster):
    api = local_cluster.api_client()
    core = client.CoreV1Api(api)
    ns = f"gw-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    job = plan.JobRef(name="gw", namespace=ns, uid=str(uuid.uuid4()))
    spec = parse_spec(
        {
            "parallelism": {"nodes": 1, "gpusPerNode": 1},
            "checkpoint": {"localPath": f"/var/lib/omnitrain/e2e-{ns}"},
            "resilience": {"restartMode": "InPlace"},
        },
        "gw",
    ).spec
    assert spec is not None
    command = [sys.executable, "-m", "omnitrain", "watchdog", "--timeout", "600", "--no-gpu-health"]
    command += ["--status-every", "1", "--", sys.executable, str(TRAINER)]
    children = plan.plan_children(job, spec, 0, options=plan.PlanOptions(command=command), now="")
    sync_file = local_cluster.root / "agent" / CONFIGMAP_SYNC_FILE
    try:
        for child in children:
            child["metadata"].pop("ownerReferences")  # no job object here: the garbage collector would take them
            _create(api, child)
        pod = next(c["metadata"]["name"] for c in children if c["kind"] == "Pod")
        folder = local_cluster.pod_dir(ns, pod)
        acked = folder / "volumes" / gang.STATE_VOLUME / ACKED_GENERATION
        mounted = folder / "volumes" / gang.GANG_VOLUME / gang.GANG_FILE
        log = local_cluster.container_log(ns, pod, plan.MAIN_CONTAINER)

        def log_text() -> str:
            return log.read_text(errors="replace") if log.exists() else "(no log)"

        wait_for(lambda: _generation(acked) == 0, 120, "generation 0 started by the supervisor")
        wait_for(lambda: "from API watch" in log_text(), 30, "the supervisor reading through its API watch")
        sync_file.write_text(f"{SYNC_SECONDS}\n")  # from now on a mounted ConfigMap changes a minute late
        name = plan.gang_config_map_name("gw")
        current = gang.GangAnnouncement.from_json(core.read_namespaced_config_map(name, ns).data[gang.GANG_FILE])
        newer = dataclasses.replace(current, generation=1)
        core.patch_namespaced_config_map(name, ns, {"data": {gang.GANG_FILE: newer.to_json()}})
        wait_for(lambda: _generation(acked) == 1, SYNC_SECONDS / 2, "generation 1 started through the API watch")
        still = gang.read_announcement(mounted)
        assert still is not None and still.generation == 0, log_text()  # the mount has not caught up
        assert "generation 1: node rank 0 started" in log_text()
        assert "gang watch:" not in log_text()  # the watch never failed: generation 1 came in its stream
        # least privilege: the pod's token reads its announcement and nothing else (not even the job's config)
        token_dir = folder / "volumes" / gang_watch.API_VOLUME
        assert _status_of(api, token_dir, ns, name) == 200
        assert _status_of(api, token_dir, ns, plan.config_map_name("gw")) == 403
    finally:
        sync_file.unlink(missing_ok=True)
        try:
            core.delete_namespace(ns)
        except ApiException:
            pass
