"""The CRD is generated from the spec models and checked in; its schema is structural and keeps the spec's limits."""

from pathlib import Path

import yaml

from omnitrain.cli import main
from omnitrain.operator import crd

REPO = Path(__file__).resolve().parents[2]


def _walk(node, path="$"):
    yield path, node
    for key in ("properties",):
        for name, sub in (node.get(key) or {}).items():
            yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_equals_generated():
    checked_in = (REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text()
    assert checked_in == crd.crd_yaml(), "regenerate: omnitrain crd > manifests/crd/omnitrainingjobs.yaml"


def test_cli_prints_the_crd(capsys):
    assert main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crd.build_crd()


def test_schema_is_structural():
    root = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        # an int-or-string node must have no type (Kubernetes' structural schema rules); every other node one
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, f"{path} has no type"
        if node.get("type") == "object" and path not in ("$.metadata",):
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path


def test_schema_keeps_limits_enums_defaults_and_optionals():
    spec = crd.spec_schema()["properties"]
    par = spec["parallelism"]["properties"]
    assert par["nodes"]["minimum"] == 1 and par["nodes"]["maximum"] == 4096 and par["nodes"]["default"] == 1
    assert par["pipelineSchedule"]["enum"] == ["1F1B", "interleaved1F1B"]
    assert par["data"] == {"type": "integer", "description": par["data"]["description"], "minimum": 1}
    lr = spec["training"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True
    assert spec["checkpoint"]["properties"]["async"]["type"] == "boolean"
    assert spec["scheduling"]["properties"]["nodeSelector"]["additionalProperties"] == {"type": "string"}
    assert spec["scheduling"]["properties"]["tolerations"]["items"]["properties"]["effect"]["enum"]
    assert "required" not in spec["checkpoint"]  # everything has a default or is optional
    rules = [r["rule"] for r in spec["parallelism"]["x-kubernetes-validations"]]
    assert "self.tensor <= self.gpusPerNode" in rules


def test_names_status_subresource_and_columns():
    body = crd.build_crd()
    assert body["metadata"]["name"] == "omnitrainingjobs.omnitrain.io"
    assert body["spec"]["names"]["shortNames"] == ["otj"]
    version = body["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Checkpoint"] == ".status.lastCheckpoint.step"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for key in (
        "phase",
        "conditions",
        "attempt",
        "restarts",
        "currentStep",
        "totalSteps",
        "lastCheckpoint",
        "excludedNodes",
        "children",
        "startTime",
        "completionTime",
        "goodput",
        "observedGeneration",
    ):
        assert key in status


def test_status_schema_is_generated_from_the_status_model():
    from omnitrain.status import JobStatus

    status = crd.status_schema()
    assert set(status["properties"]) == {f.alias or name for name, f in JobStatus.model_fields.items()}
    props = status["properties"]
    assert props["phase"]["enum"] == ["Pending", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert props["goodput"]["x-kubernetes-preserve-unknown-fields"] is True
    assert set(props["children"]["properties"]) == {"pods", "spares", "service", "configMap", "gangReaders"}
    assert set(props["promotion"]["properties"]["distill"]["properties"]) == {
        "phase",
        "name",
        "message",
        "startTime",
        "completionTime",
    }


def test_resource_quantities_are_int_or_string():
    """Issue 14, case 4: `cpu: 2` is a Kubernetes quantity as much as `cpu: "2"`."""
    resources = crd.spec_schema()["properties"]["resources"]["properties"]
    for name in ("cpu", "memory"):
        assert resources[name]["x-kubernetes-int-or-string"] is True and "type" not in resources[name]
