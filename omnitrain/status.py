"""The OmniTrainingJob status as typed models: what the operator writes, `omnitrain status` reads and the CRD's status
schema is generated from (omnitrain.operator.crd), the way omnitrain.spec is for the spec.

camelCase on the wire, snake_case in Python. Everything is optional: a field the operator has not written yet is
None (absent on the wire), never an error. Pure Python: no torch, no kopf.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
PENDING: Final = "Pending"
QUEUED: Final = "Queued"
RUNNING: Final = "Running"
RESTARTING: Final = "Restarting"
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
TERMINAL = (SUCCEEDED, FAILED)
CONDITION_TYPES = (
    "Valid",
    "Created",
    "Queued",
    "Preempted",
    "SpecApplied",
    "Running",
    "Restarting",
    "Resized",
    "DataEncoded",
    "Suspended",
    "Succeeded",
    "Failed",
    "ReconcileError",
)
# True while the operator's last pass over the job raised (the message says what); False again after a clean pass.
RECONCILE_ERROR: Final = "ReconcileError"

# Top-level lists the operator leaves out while empty (kubectl users never saw `excludedNodes: []`).
_OMIT_WHEN_EMPTY = ("conditions", "excludedNodes")


class _Status(BaseModel):
    # extra="ignore": the API server prunes unknown status fields anyway (structural schema); an older or newer
    # operator's leftovers must not make a status unreadable.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", validate_assignment=True)


class Condition(_Status):
    """One condition (Kubernetes API conventions): type, status True/False/Unknown, reason, message."""

    type: str = Field(description="Valid, Created, Running, Restarting, Suspended, Succeeded, Failed, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str | None = Field(None, description="Why, in one CamelCase word (InvalidSpec, HangDetected, ...).")
    message: str | None = Field(None, description="What happened, naming the field or pod and the fix.")
    last_transition_time: str | None = Field(
        None, description="When status last changed.", json_schema_extra={"format": "date-time"}
    )


class LastCheckpoint(_Status):
    """The newest complete checkpoint: its step, folder (as the pods see it) and when it was seen."""

    step: int | None = Field(None, description="Training step of the checkpoint.")
    path: str | None = Field(None, description="The job's checkpoint folder as the pods see it.")
    time: str | None = Field(None, description="When the operator saw it.")


class LastFailure(_Status):
    """The pod that explains the last failed attempt."""

    pod: str | None = Field(None, description="The pod.")
    node: str | None = Field(None, description="Its node.")
    exit_code: int | None = Field(None, description="The trainer container's exit code (omnitrain.contract).")
    reason: str | None = Field(None, description="The failure's reason (Crash, HangDetected, NodeLost, ...).")
    message: str | None = Field(None, description="What the pod or the operator said.")
    time: str | None = Field(None, description="When the operator noticed.")


class Children(_Status):
    """The objects of the current attempt: pods by rank, the headless Service and the config ConfigMap."""

    pods: list[str] = Field(default_factory=list, description="Pod names by node rank.")
    spares: list[str] = Field(
        default_factory=list, description="Hot spare pods (resilience.spareNodes): started, not ranks of this attempt."
    )
    service: str | None = Field(None, description="The headless Service (rendezvous, metrics).")
    config_map: str | None = Field(None, description="The ConfigMap with the trainer's config.")
    gang_readers: str | None = Field(
        None,
        description="In place: the ServiceAccount, Role and RoleBinding of this name let the pods watch "
        "<job>-gang through the API (created once; a job launched without them gets them at its next launch).",
    )


class PromotionStage(_Status):
    """One stage of the promotion chain: its object's name, phase and times."""

    phase: str | None = Field(None, description="The stage's phase.")
    name: str | None = Field(None, description="Its object's name.")
    message: str | None = Field(None, description="What the stage is doing or why it ended.")
    start_time: str | None = Field(None, description="When it started.")
    completion_time: str | None = Field(None, description="When it ended.")


class Promotion(_Status):
    """The promotion chain after a successful training: distillation, then serving."""

    training: PromotionStage | None = Field(None, description="The training job itself.")
    distill: PromotionStage | None = Field(None, description="The distillation Job.")
    inference: PromotionStage | None = Field(None, description="The inference Deployment.")
    chain: str | None = Field(None, description="training -> distillation -> serving, each with its phase.")


class JobStatus(_Status):
    """Written by the operator."""

    phase: Phase | None = Field(
        None, description="Pending, Queued, Running, Restarting, Suspended, Succeeded or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Valid, Created, Queued, Preempted, Running, Restarting, Suspended, Succeeded, Failed, "
        "ReconcileError.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    attempt: int | None = Field(None, description="Current attempt; pods of attempt N are named <job>-a<N>-n<rank>.")
    launched_attempt: int | None = Field(None, description="Last attempt whose children were all created.")
    restarts: int | None = Field(None, description="Gang restarts counted toward resilience.maxRestarts.")
    total_restarts: int | None = Field(
        None,
        description="Gang restarts after a failure or a resume, counted toward maxRestarts or not (no preemption).",
    )
    preemptions: int | None = Field(
        None,
        description="Attempts stopped to make room (Kueue preemption, eviction, drain) and resumed from the "
        "checkpoint written on SIGTERM; no restart spent.",
    )
    no_progress_restarts: int | None = Field(None, description="Restarts in a row without a newer checkpoint.")
    checkpoint_step_at_last_failure: int | None = Field(
        None, description="The newest checkpoint step when the last counted failure happened."
    )
    last_failure_class: str | None = Field(
        None, description="Class of the last failure (omnitrain.resilience.classify)."
    )
    restart_not_before: str | None = Field(None, description="Back-off: the next attempt starts no earlier than this.")
    unschedulable_since: str | None = Field(
        None,
        description="When a pod of the current attempt was first seen unschedulable while others held their nodes "
        "(scheduling.scheduleTimeoutSeconds counts from here).",
    )
    requeues: int | None = Field(
        None,
        description="Gangs taken down because they could not be placed whole, then queued again (no restart spent).",
    )
    spares_ready: int | None = Field(None, description="Hot spare pods Running (resilience.spareNodes).")
    active_nodes: int | None = Field(
        None,
        description="Nodes the job runs on while it is shrunk (parallelism.elastic); unset: parallelism.nodes.",
    )
    grow_after_checkpoint: int | None = Field(
        None,
        description="Nodes to grow back on are free: the job grows once a checkpoint newer than this step exists.",
    )
    layout_changes: int | None = Field(None, description="Times the job shrank or grew (parallelism.elastic).")
    spares_created: int | None = Field(None, description="Spare pods created so far (names <job>-s<N>).")
    current_step: int | None = Field(None, description="The step rank 0 reported last.")
    total_steps: int | None = Field(None, description="Steps to train (spec.training.steps).")
    last_checkpoint: LastCheckpoint | None = None
    excluded_nodes: list[str] = Field(default_factory=list, description="Nodes isolated for hardware evidence.")
    children: Children | None = None
    start_time: str | None = Field(None, description="When the job was first admitted.")
    completion_time: str | None = Field(None, description="When it Succeeded or Failed.")
    last_failure: LastFailure | None = None
    goodput: dict[str, Any] | None = Field(
        None, description="Productive fraction of wall time and badput seconds by cause."
    )
    message: str | None = Field(None, description="What the job is doing now, or why it ended.")
    observed_generation: int | None = Field(None, description="The spec generation this status is about.")
    launched_spec: dict[str, Any] | None = Field(
        None,
        description="The spec the gang was launched with (defaults filled in). An edit of what the gang is "
        "(model, parallelism, image, ...) made while it runs waits against it (condition SpecApplied) until the job "
        "is suspended and resumed.",
    )
    promotion: Promotion | None = None

    @field_validator("goodput", mode="before")
    @classmethod
    def _bare_ratio(cls, value: Any) -> Any:
        # A bare number (an older writer's goodput) is the ratio alone.
        return {"ratio": float(value)} if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @classmethod
    def from_wire(cls, status: dict | None) -> JobStatus:
        """The status as the API server returns it (camelCase dict, or None for a job not yet reconciled)."""
        return cls.model_validate(status or {})

    def to_wire(self) -> dict:
        """camelCase dict as stored in the API server: unset fields and empty top-level lists left out."""
        wire = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        for key in _OMIT_WHEN_EMPTY:
            if wire.get(key) == []:
                del wire[key]
        if wire.get("children", {}).get("spares") == []:  # jobs without spares look as they did before spares
            del wire["children"]["spares"]
        return wire

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(self, type_: str, status: bool, reason: str, message: str, now: str) -> None:
        """Replace one condition; lastTransitionTime changes only when the status flips."""
        value: Literal["True", "False"] = "True" if status else "False"
        old = self.condition(type_)
        since = now if old is None or old.status != value else (old.last_transition_time or now)
        new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=since)
        if old is None:
            self.conditions = [*self.conditions, new]
        else:
            self.conditions = [new if c.type == type_ else c for c in self.conditions]


__all__ = [
    "CONDITION_TYPES",
    "RECONCILE_ERROR",
    "Children",
    "Condition",
    "FAILED",
    "JobStatus",
    "LastCheckpoint",
    "LastFailure",
    "PENDING",
    "Phase",
    "Promotion",
    "PromotionStage",
    "RESTARTING",
    "RUNNING",
    "SUCCEEDED",
    "QUEUED",
    "SUSPENDED",
    "TERMINAL",
]
