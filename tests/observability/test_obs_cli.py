"""The status/report commands: registered in `omnitrain --help`, clear errors without a cluster."""

import os
import subprocess
import sys

import yaml

from omnitrain.trainer.parallel.testing import free_port


def omnitrain(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "omnitrain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_commands_are_registered():
    result = omnitrain("--help")
    assert result.returncode == 0 and "status" in result.stdout and "report" in result.stdout
    assert "--metrics-dir" in omnitrain("report", "--help").stdout


def test_status_without_kubeconfig_says_how_to_set_it(tmp_path):
    result = omnitrain("status", "demo", env={"KUBECONFIG": str(tmp_path / "missing")})
    assert result.returncode == 1 and "set KUBECONFIG" in result.stderr and "Traceback" not in result.stderr


def test_status_with_an_unreachable_api_server_names_it(tmp_path):
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    result = omnitrain("status", "demo", "-n", "ml", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 1, result.stderr
    assert f"cannot reach the API server at {server}" in result.stderr and "Traceback" not in result.stderr
