"""Session fixtures shared by all test areas.

`local_cluster`: one real local cluster (etcd, kube-apiserver, controller-manager, scheduler, the node agent with
two 2-GPU nodes) for the whole pytest session, in a temporary folder; torn down at the end. Interface: see
omnitrain/devcluster/__init__.py. Set OMNITRAIN_TEST_CLUSTER_ROOT to keep the folder somewhere you can inspect.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory):
    from omnitrain.devcluster.cluster import LocalCluster

    root = Path(os.environ.get("OMNITRAIN_TEST_CLUSTER_ROOT") or tmp_path_factory.mktemp("local-cluster"))
    cluster = LocalCluster(root)
    try:
        cluster.up(nodes=2, gpus_per_node=2)
    except Exception:
        cluster.down()
        raise
    yield cluster
    cluster.down()


@pytest.fixture(scope="session")
def local_cluster_crd(local_cluster):
    """The OmniTrainingJob CRD of manifests/crd on the local cluster, Established; the API client. Another module may
    have installed it already (409)."""
    import yaml
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from omnitrain.devcluster.testing import wait_for

    api = local_cluster.api_client()
    body = yaml.safe_load((Path(__file__).parent.parent / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
        ),
        30,
        "CRD Established",
    )
    return api
