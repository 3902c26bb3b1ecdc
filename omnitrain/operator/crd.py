"""The OmniTrainingJob CustomResourceDefinition, generated from the pydantic spec and status models (omnitrain.spec,
omnitrain.status).

Kubernetes wants a *structural* schema: every node typed, no $ref, no anyOf with null. Pydantic's JSON schema is
rewritten into one: $refs inlined, `X | None` becomes X (optional = not listed in `required`), `gt` becomes
minimum + exclusiveMinimum, literals become enums. Cross-field checks that are cheap in CEL live in
x-kubernetes-validations so the API server rejects them before the operator ever sees the object; the rest stay in
omnitrain.spec.validate_job_spec (applied by the operator).
"""

from __future__ import annotations

import copy

import yaml

from omnitrain.contract import API_VERSION, CATEGORIES, CRD_NAME, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus

# The coordinates live in omnitrain.contract; re-exported here for the operator's modules.
__all__ = [
    "API_VERSION",
    "CATEGORIES",
    "CRD_NAME",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "build_crd",
    "crd_yaml",
    "spec_schema",
    "status_schema",
    "to_structural",
]

_KEEP = (
    "type",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "format",
    "default",
)


def _resolve(node: dict, defs: dict) -> dict:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return target
    return node


def to_structural(node: dict, defs: dict) -> dict:
    """One pydantic JSON-schema node -> a Kubernetes structural-schema node (recursive)."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {len(branches)} types structurally: {node}")
        merged = dict(_resolve(branches[0], defs))
        merged.update({k: v for k, v in node.items() if k not in ("anyOf",)})
        node = merged
    out: dict = {}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
        node.setdefault("type", "string" if isinstance(node["const"], str) else "integer")
    if "enum" in node and "type" not in node:
        node = {**node, "type": "string"}
    for key in _KEEP:
        if key in node and not (key == "default" and (node[key] is None or node[key] in ({}, []))):
            out[key] = node[key]
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    out.update({k: v for k, v in node.items() if k.startswith("x-kubernetes-")})  # e.g. list-map keys
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props:
            out["properties"] = {name: to_structural(sub, defs) for name, sub in props.items()}
            required = [n for n in node.get("required", [])]
            if required:
                out["required"] = required
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = to_structural(node["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = to_structural(node.get("items", {"type": "string"}), defs)
    elif kind is None and not node.get("x-kubernetes-int-or-string"):  # int-or-string nodes carry no type
        raise ValueError(f"schema node without a type: {node}")
    return out


def spec_schema() -> dict:
    raw = JobSpec.model_json_schema(by_alias=True, mode="validation")
    schema = to_structural(raw, raw.get("$defs", {}))
    schema["description"] = "What to train, on how many nodes, and what to do with the result."
    props = schema["properties"]
    # Cheap cross-field checks at the API server; the full set runs in the operator (validate_job_spec).
    props["parallelism"]["x-kubernetes-validations"] = [
        {
            "rule": "self.tensor <= self.gpusPerNode",
            "message": "tensor must be <= gpusPerNode: tensor-parallel groups stay inside one node",
            "fieldPath": ".tensor",
        },
        {
            "rule": "self.pipelineSchedule != 'interleaved1F1B' || self.virtualStages >= 2",
            "message": "interleaved1F1B needs virtualStages >= 2",
            "fieldPath": ".virtualStages",
        },
    ]
    props["training"]["x-kubernetes-validations"] = [
        {
            "rule": "self.stage != 'dpo' || has(self.initFrom)",
            "message": "stage dpo needs initFrom (the start and frozen reference checkpoint)",
            "fieldPath": ".initFrom",
        },
    ]
    return schema


def status_schema() -> dict:
    raw = JobStatus.model_json_schema(by_alias=True, mode="validation")
    schema = to_structural(raw, raw.get("$defs", {}))
    schema["description"] = "Written by the operator."
    return schema


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.parallelism.nodes"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.currentStep"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.totalSteps", "priority": 1},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Spares", "type": "integer", "jsonPath": ".status.sparesReady", "priority": 1},
    # shared pools (-o wide): the Kueue queue the gang waits in, and how often it made room for another job
    {"name": "Queue", "type": "string", "jsonPath": ".spec.scheduling.queueName", "priority": 1},
    {"name": "Preempted", "type": "integer", "jsonPath": ".status.preemptions", "priority": 1},
    {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.lastCheckpoint.step"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "omnitrain"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A distributed training job of a video diffusion transformer.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


class _NoAliases(yaml.SafeDumper):
    """Shared sub-schemas are written out in full: anchors make the manifest hard to read and diff."""

    def ignore_aliases(self, data) -> bool:
        return True


def crd_yaml() -> str:
    header = "# Generated by `omnitrain crd` from omnitrain/spec.py and omnitrain/status.py; do not edit by hand.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliases, sort_keys=False, width=120)
