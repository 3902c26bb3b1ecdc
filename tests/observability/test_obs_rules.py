"""The PrometheusRule's groups pass `promtool check rules` and the unit tests in rules/omnitrain_rules_test.yaml."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE_MANIFEST = ROOT / "manifests" / "monitoring" / "prometheusrule.yaml"
RULE_TESTS = Path(__file__).parent / "rules" / "omnitrain_rules_test.yaml"

PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and os.environ.get("CI"):
    pytest.fail("promtool is required in CI: run `make promtool` (apt-get install prometheus)", pytrace=False)
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (make promtool / apt-get install prometheus); required in CI"
)


@pytest.fixture
def rules_dir(tmp_path):
    manifest = yaml.safe_load(RULE_MANIFEST.read_text())
    assert manifest["kind"] == "PrometheusRule"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return tmp_path


def run(*args, cwd):
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(rules_dir):
    result = run("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests(rules_dir):
    result = run("test", "rules", RULE_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_or_is_listed():
    groups = yaml.safe_load(RULE_MANIFEST.read_text())["spec"]["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", [])}
    untested = alerts - tested
    # ECC errors only come from real GPUs; its expression is still checked by promtool check rules.
    assert untested <= {"OmniTrainGPUUncorrectedECC"}, untested


def test_rules_only_use_metric_names_the_code_exports():
    """A renamed metric in the code must not silently break an alert."""
    import re

    from omnitrain import contract
    from omnitrain.observability import operator_metrics as om
    from omnitrain.observability import trainer_metrics as tm

    exported = {v for mod in (contract, om, tm) for k, v in vars(mod).items() if k.startswith("METRIC_")}
    counters = {tm.METRIC_HANGS + "_total", om.METRIC_RESTARTS + "_total"}
    histograms = {tm.METRIC_STEP_SECONDS + s for s in ("_sum", "_count", "_bucket")}
    known = exported | counters | histograms | {tm.JOB_LABEL}
    text = RULE_MANIFEST.read_text()
    used = set(re.findall(r"\b(omnitrain_[a-z0-9_]+)\b", text))
    recorded = set(re.findall(r"record: (omnitrain_job:[a-z0-9_:]+)", text))
    assert used - known == set(), f"rules use metrics nobody exports: {sorted(used - known)}"
    assert recorded  # recording rules exist (they carry colons, so the regex above does not see them)
