"""Operator settings from the environment: the pod command (torchrun behind the watchdog, or an override)."""

import pytest

from omnitrain.operator.plan import DEFAULT_TRAIN_COMMAND
from omnitrain.operator.settings import OperatorSettings


def test_default_command_is_torchrun_behind_the_watchdog():
    s = OperatorSettings.from_env({})
    assert s.train_command[:2] == ["omnitrain", "watchdog"]
    assert s.train_command[-len(DEFAULT_TRAIN_COMMAND) :] == DEFAULT_TRAIN_COMMAND
    assert OperatorSettings.from_env({"OMNITRAIN_WATCHDOG": "0"}).train_command == DEFAULT_TRAIN_COMMAND


def test_overrides():
    s = OperatorSettings.from_env(
        {
            "OMNITRAIN_TRAIN_COMMAND": "python -c 'print(1)'",
            "OMNITRAIN_NAMESPACES": "a,b",
            "OMNITRAIN_RESYNC_SECONDS": "2",
            "OMNITRAIN_CREATE_WORKERS": "4",
        }
    )
    assert s.train_command == ["python", "-c", "print(1)"] and s.namespaces == ["a", "b"]
    assert s.resync_seconds == 2.0 and s.create_workers == 4 and s.peering is None
    assert s.plan_options().command == ["python", "-c", "print(1)"]


def test_pod_env_reaches_every_training_pod_and_bad_words_are_refused():
    import pytest

    from omnitrain.operator.plan import JobRef, render_pod
    from omnitrain.spec import JobSpec

    s = OperatorSettings.from_env({"OMNITRAIN_POD_ENV": "OMP_NUM_THREADS=1 NCCL_DEBUG='WARN INIT'"})
    assert s.pod_env == {"OMP_NUM_THREADS": "1", "NCCL_DEBUG": "WARN INIT"}
    pod = render_pod(JobRef(name="j", namespace="ns", uid="u"), JobSpec.model_validate({}), 0, 0, [], s.plan_options())
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == "1" and env["NCCL_DEBUG"] == "WARN INIT"
    with pytest.raises(ValueError, match="OMNITRAIN_POD_ENV.*NAME=VALUE"):
        OperatorSettings.from_env({"OMNITRAIN_POD_ENV": "OMP_NUM_THREADS"})


def test_operator_side_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys, omnitrain.operator.handlers, omnitrain.operator.run, omnitrain.operator.promotion_kube, "
        "omnitrain.resilience.operator_hook; from omnitrain.operator.settings import OperatorSettings; "
        "OperatorSettings.from_env({}); from omnitrain.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_metrics_listen_on_loopback_unless_told_and_the_deployment_says_every_interface():
    from pathlib import Path

    import pytest
    import yaml

    from omnitrain.observability.operator_metrics import start_operator_metrics_server

    assert OperatorSettings.from_env({}).metrics_address == "127.0.0.1"
    told = OperatorSettings.from_env({"OMNITRAIN_OPERATOR_METRICS_ADDRESS": "0.0.0.0"})
    assert told.metrics_address == "0.0.0.0"
    with pytest.raises(ValueError, match="OMNITRAIN_OPERATOR_METRICS_ADDRESS: 'everywhere' is not an IP address"):
        OperatorSettings.from_env({"OMNITRAIN_OPERATOR_METRICS_ADDRESS": "everywhere"})
    # in a pod Prometheus scrapes the pod's IP: the manifest keeps 0.0.0.0
    deployment = yaml.safe_load((Path(__file__).parents[2] / "manifests/operator/deployment.yaml").read_text())
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OMNITRAIN_OPERATOR_METRICS_ADDRESS"] == "0.0.0.0"
    # the server binds what it is given (the default: loopback only)
    metrics = start_operator_metrics_server(0)
    try:
        assert metrics._server is not None and metrics._server.server_address[0] == "127.0.0.1"
    finally:
        metrics.close()


def test_the_webhook_is_off_unless_a_port_is_set_and_needs_its_certificate():
    from omnitrain.operator.settings import WebhookSettings

    assert OperatorSettings.from_env({}).webhook is None
    with pytest.raises(ValueError, match="OMNITRAIN_WEBHOOK_CERT_DIR"):
        OperatorSettings.from_env({"OMNITRAIN_WEBHOOK_PORT": "9443"})
    with pytest.raises(ValueError, match="OMNITRAIN_WEBHOOK_ADDRESS: 'localhost' is not an IP address"):
        WebhookSettings.from_env(
            {
                "OMNITRAIN_WEBHOOK_PORT": "9443",
                "OMNITRAIN_WEBHOOK_CERT_DIR": "/c",
                "OMNITRAIN_WEBHOOK_ADDRESS": "localhost",
            }
        )
    hook = OperatorSettings.from_env({"OMNITRAIN_WEBHOOK_PORT": "9443", "OMNITRAIN_WEBHOOK_CERT_DIR": "/c"}).webhook
    assert hook == WebhookSettings(port=9443, cert_dir="/c", address="0.0.0.0", host=None, configuration=None)


def test_leader_election_is_off_unless_a_lease_is_named_and_takes_the_pod_s_name_and_namespace():
    assert OperatorSettings.from_env({}).leader_election is None
    terms = OperatorSettings.from_env(
        {"OMNITRAIN_LEADER_ELECTION": "omnitrain-operator", "POD_NAME": "op-7f9-x", "POD_NAMESPACE": "omnitrain-system"}
    ).leader_election
    assert terms is not None
    assert (terms.name, terms.namespace, terms.identity) == ("omnitrain-operator", "omnitrain-system", "op-7f9-x")
    assert (terms.duration_s, terms.renew_deadline_s, terms.retry_s) == (15, 10.0, 2.0)  # client-go's defaults
    quick = OperatorSettings.from_env(
        {
            "OMNITRAIN_LEADER_ELECTION": "l",
            "OMNITRAIN_LEADER_ELECTION_NAMESPACE": "ns",
            "OMNITRAIN_LEADER_ELECTION_IDENTITY": "a",
            "OMNITRAIN_LEASE_DURATION_SECONDS": "4",
            "OMNITRAIN_LEASE_RENEW_DEADLINE_SECONDS": "3",
            "OMNITRAIN_LEASE_RETRY_SECONDS": "0.5",
        }
    ).leader_election
    assert quick is not None and (quick.namespace, quick.duration_s, quick.retry_s) == ("ns", 4, 0.5)


def test_leader_election_settings_that_could_let_two_replicas_act_are_refused_naming_the_variables():
    with pytest.raises(ValueError, match="OMNITRAIN_PEERING and OMNITRAIN_LEADER_ELECTION"):
        OperatorSettings.from_env({"OMNITRAIN_LEADER_ELECTION": "l", "OMNITRAIN_PEERING": "p"})
    with pytest.raises(ValueError, match="OMNITRAIN_LEASE_RETRY_SECONDS.*renew deadline"):
        OperatorSettings.from_env({"OMNITRAIN_LEADER_ELECTION": "l", "OMNITRAIN_LEASE_RENEW_DEADLINE_SECONDS": "20"})
    with pytest.raises(ValueError, match="OMNITRAIN_LEASE_DURATION_SECONDS: 'soon' is not a number"):
        OperatorSettings.from_env({"OMNITRAIN_LEADER_ELECTION": "l", "OMNITRAIN_LEASE_DURATION_SECONDS": "soon"})
