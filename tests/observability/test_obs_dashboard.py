"""The checked-in Grafana dashboard matches its generator, and every query in it parses (promtool)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from omnitrain.observability.dashboard import build_dashboard, panel_queries, render

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "manifests" / "monitoring" / "dashboards" / "omnitrain.json"
KUSTOMIZATION = ROOT / "manifests" / "monitoring" / "kustomization.yaml"


def test_checked_in_json_is_the_generated_one():
    assert DASHBOARD.read_text() == render(), (
        "regenerate: python -m omnitrain.observability.dashboard > manifests/monitoring/dashboards/omnitrain.json"
    )


def test_dashboard_covers_the_figures_sres_watch():
    titles = {p["title"] for p in build_dashboard()["panels"]}
    for wanted in (
        "MFU",
        "Tokens / s",
        "Step time",
        "Loss",
        "Goodput",
        "Goodput and badput by cause",
        "Restarts",
        "Checkpoint blocking",
        "GPU utilisation",
        "GPU memory used",
    ):
        assert wanted in titles
    ids = [p["id"] for p in build_dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    json.loads(DASHBOARD.read_text())


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load(KUSTOMIZATION.read_text())
    folder = KUSTOMIZATION.parent
    assert sorted(k["resources"]) == sorted(p.name for p in folder.glob("*.yaml") if p.name != KUSTOMIZATION.name)
    for generator in k["configMapGenerator"]:
        for f in generator["files"]:
            assert (folder / f).exists()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make promtool)")
def test_every_panel_query_parses(tmp_path):
    # Grafana substitutes the variables before querying; promtool sees what Prometheus would.
    rules = [
        {
            "record": f"dashboard:query:{i}",
            "expr": q.replace("$namespace", "ml").replace("$job", "demo").replace("${datasource}", ""),
        }
        for i, q in enumerate(panel_queries(build_dashboard()))
    ]
    (tmp_path / "dashboard_queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", "dashboard_queries.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_monitoring_bundle():
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATION.parent)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout))
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"]
