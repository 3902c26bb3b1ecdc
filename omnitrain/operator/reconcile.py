"""The operator's decisions as pure functions: (job spec, job status, observed pods, now) -> actions + new status.

Level-triggered: every call looks at the whole picture again, so a lost event or an operator restart costs nothing.
The thin layer in handlers.py/kube.py reads the objects, calls `reconcile`, and carries out what it returns.

`reconcile` is a dispatcher over named steps, in order: finished, invalid spec, suspend, resume, waiting for the old
gang, back-off, launch, keep spares, failure, awaiting admission, unplaceable gang, observe. Each step returns the
pass's Decision when it settles the pass, or None to hand on to the next one (resume hands on after it has started
the next attempt).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pydantic import ValidationError

from omnitrain.contract import PREEMPTED_REASON
from omnitrain.operator import plan
from omnitrain.operator.admission import ADMISSION_GATE
from omnitrain.operator.spec_edits import WHEN_HELD
from omnitrain.resilience.classify import Failure, NodeObservation, PodObservation, on_lost_node
from omnitrain.resilience.decide import decide, last_failure
from omnitrain.resilience.goodput import with_reserved_capacity
from omnitrain.resilience.node_grace import NODE_NOT_READY, NODE_READY
from omnitrain.resilience.recovery import Fail, GangRestart, Wait, backoff_seconds
from omnitrain.spec import JobSpec, validate_job_spec
from omnitrain.status import (
    CONDITION_TYPES,
    FAILED,
    PENDING,
    QUEUED,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
    Children,
    JobStatus,
    LastCheckpoint,
)
from omnitrain.timestamps import parse_rfc3339

FORCE_DELETE_AFTER_SECONDS = 60  # after the deletion deadline: the kubelet had its grace period and then some
WAIT_FOR_PODS_SECONDS = 2.0  # look again this soon while old pods go away (their deletion events come too)
WAIT_RECHECK_SECONDS = 10.0  # recovery said Wait (e.g. too few usable nodes): look again this soon
WAITING_FOR_ADMISSION = "WaitingForAdmission"  # the Queued condition's reason while a queue gates the pods

__all__ = [
    "CONDITION_TYPES",
    "Decision",
    "Event",
    "FAILED",
    "PENDING",
    "QUEUED",
    "RESTARTING",
    "RUNNING",
    "SUCCEEDED",
    "SUSPENDED",
    "ChildRefused",
    "SpecCheck",
    "TERMINAL",
    "add_seconds",
    "child_refused",
    "parse_spec",
    "reconcile",
    "spec_field",
]


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    """What to do now. Order of execution: delete pods, create children, patch status, post events."""

    status: JobStatus = field(default_factory=JobStatus)  # the full new status
    delete_pods: list[str] = field(default_factory=list)
    create_attempt: int | None = None  # create (if absent) the children of this attempt
    create_pods: list[str] | None = None  # ... but of its pods only these (None: all); the rest exist
    promoted: list[str] = field(default_factory=list)  # hot spares that became ranks (named in the announcement)
    events: list[Event] = field(default_factory=list)
    requeue_after_seconds: float | None = None  # one more pass this many seconds from now (None: events suffice)
    isolate_nodes: list[str] = field(default_factory=list)  # label+taint these nodes (hardware evidence)
    force_delete_pods: list[str] = field(default_factory=list)  # stuck terminating (node dead): grace period 0
    delete_children: list[tuple[str, str]] = field(default_factory=list)  # (kind, name): a launch undone
    create_encode_job: bool = False  # spec.data.preEncode: create the pre-encoding Job (preencode.py)


class ChildRefused(Exception):
    """The API server refused to create one of the job's children: 422/400 (the object is invalid: `causes` are
    the API's (field path, message) pairs), or 409 for an object of that name the job does not own (`owner`
    describes who does; the operator neither adopts nor overwrites it). Raised by the kube layer; `child_refused`
    turns it into the job's Failed decision."""

    def __init__(
        self,
        kind: str,
        name: str,
        code: int,
        message: str,
        causes: list[tuple[str, str]] | None = None,
        owner: str | None = None,
    ) -> None:
        super().__init__(f"{kind} {name!r}: {code} {message}")
        self.kind, self.name, self.code, self.message = kind, name, code, message
        self.causes = list(causes or [])
        self.owner = owner

    @property
    def conflict(self) -> bool:
        return self.code == 409

    @classmethod
    def from_api(cls, kind: str, name: str, code: int, body: str | bytes | None) -> ChildRefused:
        """From an API error's body (a metav1.Status: message, details.causes[].field/message)."""
        status = api_status(body)
        details = status.get("details")
        details = details if isinstance(details, dict) else {}
        causes = [
            (str(c.get("field") or ""), str(c.get("message") or c.get("reason") or ""))
            for c in details.get("causes") or []
            if isinstance(c, dict)
        ]
        return cls(kind, name, code, api_message(body, status), causes)


def api_status(body: str | bytes | None) -> dict:
    """The metav1.Status an API error's body carries; {} when the body is not one."""
    try:
        status = json.loads(body or "{}")
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def api_message(body: str | bytes | None, status: dict | None = None) -> str:
    """The Status's message, else the body as text."""
    status = api_status(body) if status is None else status
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return str(status.get("message") or text or "refused")


# An RBAC denial ("User \"system:serviceaccount:...\" cannot create resource \"pods\" ...") is the operator's
# install at fault, not the job: it stays a ReconcileError that the next pass retries once the role is fixed.
_RBAC_DENIAL = re.compile(r'cannot [a-z]+ resource "')


def refused_by_the_api(code: int, body: str | bytes | None) -> bool:
    """A create the API server turned down for what the object is: invalid (422, 400) or forbidden by admission
    (403: a PriorityClass that does not exist, an exceeded ResourceQuota, a policy), as opposed to RBAC."""
    if code in (400, 422):
        return True
    if code != 403:
        return False
    return not _RBAC_DENIAL.search(api_message(body))


class SpecCheck(NamedTuple):
    """The spec parsed once per pass: the model, or messages naming each bad field and its fix."""

    spec: JobSpec | None
    problems: list[str]


def parse_spec(raw: dict | None, name: str | None = None, allowed_host_roots: Sequence[str] | None = None) -> SpecCheck:
    """The spec checked as the operator and the API server would check what it creates: `name`, the job's
    metadata.name when known, is checked for the names derived from it (plan.job_name_problems);
    `allowed_host_roots`, the operator's OMNITRAIN_ALLOWED_HOST_ROOTS (None: hostPath roots not checked)."""
    named = plan.job_name_problems(name) if name is not None else []
    try:
        spec = JobSpec.model_validate(raw or {})
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            where = ".".join(["spec", *(str(x) for x in e["loc"])])  # loc () is the spec itself (`spec: 5`)
            msgs.append(f"{where}: {e['msg']}")
        return SpecCheck(None, named + msgs)
    return SpecCheck(spec, named + [str(e) for e in validate_job_spec(spec, allowed_host_roots)])


def add_seconds(timestamp: str, seconds: float) -> str:
    """RFC 3339 (second resolution, UTC, as the operator writes them) plus seconds; comparable as strings."""
    import datetime as dt

    t = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ") + dt.timedelta(seconds=math.ceil(seconds))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_until(now: str, then: str, unreadable: float) -> float:
    """Seconds from `now` to `then` (RFC 3339), 0 when past; `unreadable` when either cannot be parsed."""
    start, end = parse_rfc3339(now), parse_rfc3339(then)
    return max(0.0, end - start) if start is not None and end is not None else unreadable


def teardown(
    pods: list[PodObservation], nodes: Mapping[str, NodeObservation], unfinished_only: bool = False
) -> tuple[list[str], list[str]]:
    """(pods to delete, pods to force-delete): those on a lost node get grace period 0, since no kubelet will
    confirm a normal deletion; pods already terminating are left to it."""
    lost = [p.name for p in pods if on_lost_node(p, nodes)]
    lost_set = set(lost)
    delete = [
        p.name for p in pods if not p.deleted and p.name not in lost_set and (not unfinished_only or p.unfinished)
    ]
    return delete, lost


def final_progress(
    status: JobStatus, pods: list[PodObservation], spec: JobSpec, checkpoint_root: str, now: str
) -> None:
    """Status fields from rank 0's termination message at success: the last step, the final checkpoint and the
    job's goodput as the trainer computed them (the progress scrape may have missed the last seconds, and the
    goodput needs the whole metrics log on the persistent volume, which the operator does not mount), with the
    spares' reserved capacity."""
    rank0 = next((p for p in pods if p.rank == 0), None)
    term = rank0.termination if rank0 is not None else None
    if term is None:
        return
    if term.step is not None:
        status.current_step = term.step
    if term.checkpoint_step:
        status.last_checkpoint = LastCheckpoint(step=term.checkpoint_step, path=checkpoint_root, time=now)
    if isinstance(term.goodput, dict):
        status.goodput = with_reserved_capacity(term.goodput, spec.parallelism.nodes, spec.resilience.spare_nodes)


# ---- the steps -------------------------------------------------------------------------------------------------


@dataclass
class _Pass:
    """What one reconcile looks at, and the Decision it is building."""

    job: plan.JobRef
    spec: JobSpec
    pods: list[PodObservation]
    now: str
    nodes: Mapping[str, NodeObservation]
    usable_nodes: list[str] | None
    d: Decision
    admission: str | None = None  # the queue's words on why the attempt's pod group is not admitted yet
    held: Sequence[str] = ()  # edited fields the gang does not take (spec_edits): `spec` has them as launched
    encoding: tuple[str, str] | None = None  # the pre-encoding Job's (phase, message) while it gates the launch
    intent: JobSpec | None = None  # the spec as written (held edits applied); `spec` is it at status.activeNodes
    free_nodes: int | None = None  # Ready schedulable nodes with no pod of the job, when known (an elastic job)
    _current: tuple[tuple, list[PodObservation]] | None = field(default=None, repr=False, compare=False)

    @property
    def st(self) -> JobStatus:
        return self.d.status

    @property
    def attempt(self) -> int:
        return self.st.attempt or 0

    @property
    def in_place(self) -> bool:
        return plan.in_place(self.spec)

    def _is_current(self) -> Callable[[PodObservation], bool]:
        """In place a pod belongs to the generations it is a member of; else to the attempt it was created for.
        (A set of the members, made once per call: a 1,024-pod gang must not cost a scan of the list per pod.)"""
        if self.in_place:
            members = set(self.expected())
            return lambda pod: pod.name in members
        return lambda pod: pod.attempt == self.attempt

    @property
    def current(self) -> list[PodObservation]:
        """The pods of the current attempt (in place: its members, as this generation sees them). Kept while the
        attempt and its members stay what they were: steps ask for it several times a pass, and at 1,024 pods each
        computation is a scan of the job."""
        failed_at = self.st.last_failure.time if self.st.last_failure else None  # what in_generation reads
        key = (self.attempt, tuple(self.expected()) if self.in_place else (), failed_at)
        if self._current is not None and self._current[0] == key:
            return self._current[1]
        is_current = self._is_current()
        pods = [p for p in self.pods if is_current(p)]
        if self.in_place:  # a container restarted in place still shows how it ended in an earlier generation
            pods = [in_generation(p, self.attempt, self.st) for p in pods]
        self._current = (key, pods)
        return pods

    @property
    def stale(self) -> list[PodObservation]:
        is_current, spares = self._is_current(), set(self.spares())
        return [p for p in self.pods if not is_current(p) and p.name not in spares]

    def spares(self) -> list[str]:
        return list(self.st.children.spares) if self.in_place and self.st.children else []

    def topped_up(self, spares: list[str]) -> list[str]:
        """`spares` plus new names (numbered over the job's life) up to resilience.spareNodes."""
        out = list(spares)
        while len(out) < self.spec.resilience.spare_nodes:
            index = self.st.spares_created or 0
            self.st.spares_created = index + 1
            out.append(plan.spare_name(self.job.name, index))
        return out

    def unusable(self, pod: PodObservation | None, isolate: Sequence[str] = ()) -> bool:
        """A pod that cannot take part in the next generation: gone, being deleted, finished (a pod's phase never
        goes back), on a lost node or on a node being isolated for hardware evidence."""
        return (
            pod is None
            or pod.deleted
            or pod.phase in ("Succeeded", "Failed")
            or on_lost_node(pod, self.nodes)
            or (pod.node is not None and pod.node in isolate)
        )

    def expected(self) -> list[str]:
        members = self.st.children.pods if self.in_place and self.st.children else None
        return plan.members_of(self.job.name, self.attempt, self.spec.parallelism.nodes, members)


def in_generation(pod: PodObservation, generation: int, st: JobStatus) -> PodObservation:
    """`pod` as generation `generation` sees it: an end its supervisor reported for an earlier generation (the
    termination message's generation), or without a generation one that finished before the failure that started
    this generation, is history, not a failure of this one."""
    if pod.exit_code is None and pod.termination is None:
        return pod
    term = pod.termination
    if term is not None and term.generation is not None:
        old = term.generation < generation
    else:
        started = st.last_failure.time if st.last_failure and generation > 0 else None
        old = started is not None and pod.finished_at is not None and pod.finished_at < started
    if not old or pod.phase not in ("Running", "Pending"):
        return pod
    return replace(pod, exit_code=None, container_reason=None, termination_message=None)


def suspend(p: _Pass) -> Decision | None:
    if not p.spec.suspend:
        return None
    st, now = p.st, p.now
    p.d.delete_pods = [pod.name for pod in p.pods if not pod.deleted]
    if st.phase != SUSPENDED:
        p.d.events.append(Event("Normal", "Suspended", f"suspended at attempt {p.attempt}; pods deleted"))
    st.phase, st.message = SUSPENDED, "suspended: no pods; set spec.suspend=false to resume"
    st.set_condition("Suspended", True, "Suspended", "spec.suspend is true", now)
    st.set_condition("Running", False, "Suspended", "spec.suspend is true", now)
    p.d.requeue_after_seconds = WAIT_FOR_PODS_SECONDS if p.pods else None
    return p.d


def resume(p: _Pass) -> Decision | None:
    """Resuming starts a fresh attempt (from the newest checkpoint); it does not count as a failure restart."""
    st = p.st
    if st.phase != SUSPENDED:
        return None
    attempt = p.attempt + 1
    st.attempt, st.phase, st.message = attempt, RESTARTING, f"resuming as attempt {attempt}"
    st.total_restarts = (st.total_restarts or 0) + 1
    st.set_condition("Suspended", False, "Resumed", "spec.suspend is false", p.now)
    p.d.events.append(Event("Normal", "Resumed", f"resuming as attempt {attempt}"))
    p.d.delete_pods = [pod.name for pod in p.pods if not pod.deleted]
    st.children = None  # a whole new gang (in place too: the suspended one is gone)
    st.launched_spec = None  # ... rendered from the spec as it is now, edits held meanwhile included
    return None


def waiting_for_old_gang(p: _Pass) -> Decision | None:
    """The whole old gang must be gone before the new one starts (ports, GPUs)."""
    stale = p.stale
    if p.st.phase not in (RESTARTING, QUEUED) or not stale:
        return None
    # A pod on a dead node stays Terminating forever (no kubelet confirms); the next gang must not wait on it.
    p.d.force_delete_pods = [
        pod.name
        for pod in stale
        if on_lost_node(pod, p.nodes)
        or (
            pod.deleted
            and pod.deletion_timestamp
            and add_seconds(pod.deletion_timestamp, FORCE_DELETE_AFTER_SECONDS) <= p.now
        )
    ]
    p.d.delete_pods = [n for n in p.d.delete_pods if n not in p.d.force_delete_pods]
    p.d.requeue_after_seconds = WAIT_FOR_PODS_SECONDS
    if p.in_place and p.current:
        return None  # a replacement need not wait for the pod it replaces: the pods that stay keep their own ports
    return p.d


def back_off(p: _Pass) -> Decision | None:
    """Back-off between counted restarts (resilience.restartBackoffSeconds) and before a queued gang's next try:
    one more pass when it ends."""
    not_before = p.st.restart_not_before
    if p.st.phase not in (RESTARTING, QUEUED) or not not_before or p.now >= not_before:
        return None
    p.d.requeue_after_seconds = seconds_until(p.now, not_before, WAIT_FOR_PODS_SECONDS)
    return p.d


ENCODE_RECHECK_SECONDS = 5.0  # look at the pre-encoding Job again this soon (its events do not wake the job)


def awaits_encoding(spec: JobSpec, st: JobStatus) -> bool:
    """spec.data.preEncode, and the gang never launched and the data not encoded yet: the pre-encoding Job gates
    the launch (its phase is what the pass needs to see)."""
    done = st.condition("DataEncoded")
    return spec.data.pre_encode is not None and st.launched_attempt is None and not (done and done.status == "True")


def pre_encoding(p: _Pass) -> Decision | None:
    """spec.data.preEncode: before the first launch, the pre-encoding Job runs to success (DataEncoded True), or
    the job fails naming it. Once encoded, restarts and later launches do not encode again."""
    st, now, pre = p.st, p.now, p.spec.data.pre_encode
    if pre is None or not awaits_encoding(p.spec, st):
        return None
    phase, message = p.encoding or (PENDING, "pre-encoding job not created yet")
    what = f"{p.spec.data.path} -> {pre.path}"
    if phase == SUCCEEDED:
        st.set_condition("DataEncoded", True, "Encoded", f"{message}: {what}", now)
        p.d.events.append(Event("Normal", "DataEncoded", f"dataset encoded: {what}"))
        return None  # launch in this pass
    if phase == FAILED:
        msg = f"pre-encoding failed ({message}); see the logs of job {p.job.name}-encode"
        st.phase, st.message, st.completion_time = FAILED, msg, now
        st.set_condition("DataEncoded", False, "EncodeFailed", msg, now)
        st.set_condition("Failed", True, "EncodeFailed", msg, now)
        p.d.events.append(Event("Warning", "EncodeFailed", msg))
        return p.d
    if p.encoding is None:
        p.d.create_encode_job = True
        p.d.events.append(Event("Normal", "EncodingStarted", f"pre-encoding {what}"))
    st.set_condition("DataEncoded", False, "Encoding", f"{message}: {what}", now)
    st.phase, st.message = PENDING, f"encoding the dataset before the first launch ({what})"
    p.d.requeue_after_seconds = ENCODE_RECHECK_SECONDS
    return p.d


def launch(p: _Pass) -> Decision | None:
    st, attempt, now = p.st, p.attempt, p.now
    if st.launched_attempt == attempt:
        return None
    expected = p.expected()
    spares = p.topped_up(p.spares()) if p.in_place else []
    present = {pod.name for pod in p.pods if not pod.deleted}
    current = {pod.name for pod in p.current}
    missing = [name for name in expected if name not in current]
    missing += [name for name in spares if name not in present]
    if missing or st.phase in (None, RESTARTING, QUEUED):
        p.d.create_attempt = attempt
        # In place the pods that stay are not created again (a restart costs O(replaced pods) calls, not O(job)).
        p.d.create_pods = missing if p.in_place else None
    st.launched_attempt = attempt  # written only after the creations succeed (kube layer order)
    # held edits stay out of it (the effective spec), and so does an elastic shrink (a layout, not an edit)
    st.launched_spec = (p.intent or p.spec).to_wire()
    st.children = Children(
        pods=expected,
        spares=spares,
        service=plan.service_name(p.job.name),
        config_map=plan.config_map_name(p.job.name),
        gang_readers=plan.gang_reader_name(p.job.name) if p.in_place else None,  # created in this pass if absent
    )
    st.set_condition(
        "Created", True, "ChildrenCreated", f"attempt {attempt}: {len(expected)} pods, service and config", now
    )
    if st.phase == QUEUED:
        st.set_condition("Queued", False, "Requeued", f"attempt {attempt}: the gang tries again", now)
    reason = "Restarted" if st.phase == RESTARTING else "Created"
    if p.in_place and st.phase == RESTARTING:
        kept = len(expected) - len(missing)
        what = f"generation {attempt} announced: {kept} pods kept, {len(missing)} created"
    else:
        what = f"created {len(expected)} pods for attempt {attempt}"
    p.d.events.append(Event("Normal", reason, what))
    st.set_condition("Restarting", False, "Launched", f"attempt {attempt} launched", now)
    st.phase, st.message = PENDING, f"attempt {attempt}: waiting for pods"
    return p.d


def failure(p: _Pass) -> Decision | None:
    """Launched: one decision (omnitrain.resilience.decide) over the attempt's pods, their nodes and the pods that
    went missing (deleted, evicted, node gone)."""
    present = {pod.name for pod in p.current}
    missing = [n for n in p.expected() if n not in present]
    action = decide(p.current, p.nodes, p.st, p.spec, missing=missing, usable_nodes=p.usable_nodes, now=p.now)
    if action is None or (isinstance(action, Wait) and action.reason == NODE_NOT_READY):
        return node_not_ready(p, action)
    st, now, d = p.st, p.now, p.d
    assert action.failure is not None  # decide() classifies before it plans
    seen = last_failure(action.failure, now)
    st.last_failure_class = action.failure.failure_class.value
    match action:
        case Wait():
            # Neither restart nor fail: the failed pods stay (they are the evidence), the recovery state is not
            # advanced, and the job says why it waits; the event and the isolation only when the wait begins.
            old = st.last_failure
            if old is None or (old.pod, old.reason) != (seen.pod, seen.reason):
                st.last_failure = seen
            restarting = st.condition("Restarting")
            if restarting is None or restarting.reason != action.reason:
                d.events.append(Event("Warning", action.reason, action.message))
                d.isolate_nodes = list(action.isolate_nodes)
            st.phase, st.message = PENDING, action.message
            st.set_condition("Running", False, action.reason, action.message, now)
            st.set_condition("Restarting", False, action.reason, action.message, now)
            d.requeue_after_seconds = WAIT_RECHECK_SECONDS
        case Fail():
            d.isolate_nodes = list(action.isolate_nodes)
            d.status = st = action.state.apply(st)
            st.last_failure = seen
            st.phase, st.message, st.completion_time = FAILED, action.message, now
            st.set_condition("Running", False, action.reason, action.message, now)
            st.set_condition("Failed", True, action.reason, action.message, now)
            d.delete_pods, d.force_delete_pods = teardown(p.pods, p.nodes, unfinished_only=True)
            d.events.append(Event("Warning", action.reason, action.message))
        case GangRestart():
            d.isolate_nodes = list(action.isolate_nodes)
            d.status = st = action.state.apply(st)
            st.last_failure = seen
            st.restart_not_before = add_seconds(now, action.delay_seconds) if action.delay_seconds > 0 else None
            st.attempt, st.phase, st.message = p.attempt + 1, RESTARTING, action.message
            st.set_condition("Running", False, action.reason, action.message, now)
            st.set_condition("Restarting", True, action.reason, action.message, now)
            if not action.counted:
                why = preemption_reason(action.failure)
                st.set_condition("Preempted", True, why, action.message, now)
            if p.in_place:
                replaced = in_place_restart(p, action.isolate_nodes)
                d.delete_pods, d.force_delete_pods = teardown([pod for pod in p.pods if pod.name in replaced], p.nodes)
            else:
                d.delete_pods, d.force_delete_pods = teardown(p.pods, p.nodes)
            d.events.append(Event("Warning", action.reason, action.message))
            d.requeue_after_seconds = WAIT_FOR_PODS_SECONDS
            if p.in_place and action.delay_seconds <= 0:
                # nothing to wait for (the pods that stay keep their ports): announce in this same pass
                return launch(p) or d
    return d


def preemption_reason(failure: Failure | None) -> str:
    """The Preempted condition's reason: the words of whoever took the pods (Kueue's WorkloadEvictedDueToPreempted,
    the eviction API's EvictionByEvictionAPI, the scheduler's PreemptionByScheduler), else Preempted (the ranks'
    SIGTERM exit)."""
    pod = failure.primary if failure is not None else None
    return (pod.disruption_reason or pod.pod_reason or PREEMPTED_REASON) if pod is not None else PREEMPTED_REASON


def replaced_ranks(p: _Pass, isolate: Sequence[str]) -> list[int]:
    """The node ranks whose pod cannot take part in the next generation (`_Pass.unusable`)."""
    by_name = {pod.name: pod for pod in p.pods}
    return [rank for rank, name in enumerate(p.expected()) if p.unusable(by_name.get(name), isolate)]


def in_place_restart(p: _Pass, isolate: Sequence[str]) -> set[str]:
    """The next generation's members (in status.children.pods: the pods that stay, a Running spare for each rank
    whose pod is replaced while one is left, else a new pod), the spares topped up again; returns the names of
    the pods replaced (members and spares that cannot go on). `p.st.attempt` is already the new generation."""
    old = p.expected()  # status.children.pods still lists the last generation's members
    by_name = {pod.name: pod for pod in p.pods}
    ranks = replaced_ranks(p, isolate)
    bad_spares = {s for s in p.spares() if p.unusable(by_name.get(s), isolate)}
    ready = [s for s in p.spares() if s not in bad_spares and by_name[s].phase == "Running"]
    members = list(old)
    for rank in ranks:
        members[rank] = ready.pop(0) if ready else plan.pod_name(p.job.name, p.attempt, rank)
    p.d.promoted = [name for name in members if name in p.spares()]
    spares = p.topped_up([s for s in p.spares() if s not in bad_spares and s not in members])
    p.st.children = Children(
        pods=members,
        spares=spares,
        service=plan.service_name(p.job.name),
        config_map=plan.config_map_name(p.job.name),
    )
    return {old[r] for r in ranks} | bad_spares


def keep_spares(p: _Pass) -> Decision | None:
    """Between failures: a spare that cannot go on (its node lost, the pod gone or ended) is replaced in the
    background, without touching the gang; hands on to the next step."""
    if not p.in_place or p.st.launched_attempt != p.attempt or not p.spec.resilience.spare_nodes:
        return None
    by_name = {pod.name: pod for pod in p.pods}
    bad = [s for s in p.spares() if p.unusable(by_name.get(s))]
    spares = p.topped_up([s for s in p.spares() if s not in bad])
    if spares == p.spares():
        return None
    gone = [s for s in bad if s in by_name]
    delete, force = teardown([by_name[s] for s in gone], p.nodes)
    p.d.delete_pods += [n for n in delete if n not in p.d.delete_pods]
    p.d.force_delete_pods += force
    assert p.st.children is not None
    p.st.children.spares = spares
    new = [s for s in spares if s not in by_name]
    p.d.create_attempt, p.d.create_pods = p.attempt, new
    p.d.events.append(Event("Normal", "SpareReplaced", f"spare(s) {', '.join(bad)} replaced by {', '.join(new)}"))
    return None


def node_not_ready(p: _Pass, action: Wait | None) -> Decision | None:
    """Nothing failed, but a node of the attempt may be NotReady within spec.resilience.nodeNotReadySeconds (decide's
    Wait NodeNotReady): the pods keep running and the job says why it does not restart (status.message, condition
    Restarting=False NodeNotReady, a Warning event when the wait begins or its nodes change) and looks again at the
    deadline. Once no node is NotReady any more the wait ends without a restart (a Normal event)."""
    st, now, d = p.st, p.now, p.d
    restarting = st.condition("Restarting")
    before = restarting.message if restarting is not None and restarting.reason == NODE_NOT_READY else None
    if action is None:
        if before is not None:
            msg = f"Ready again within the grace, no restart (was: {before})"
            st.set_condition("Restarting", False, NODE_READY, msg, now)
            d.events.append(Event("Normal", NODE_READY, msg))
        return None
    if before != action.message:
        d.events.append(Event("Warning", NODE_NOT_READY, action.message))
    d = observe(p)
    st.message = f"{st.message}; {action.message}"
    st.set_condition("Restarting", False, NODE_NOT_READY, action.message, now)
    d.requeue_after_seconds = max(1.0, action.recheck_after_seconds or WAIT_RECHECK_SECONDS)
    return d


def awaiting_admission(p: _Pass) -> Decision | None:
    """With scheduling.queueName, Kueue holds the attempt's pod group behind its scheduling gate until the group is
    admitted whole: the job is Queued with Kueue's words (`admission`, from the group's Workload) and no pod runs.
    Once the gate is gone it says Admitted and hands on."""
    st, now, d = p.st, p.now, p.d
    gated = [pod for pod in p.current if ADMISSION_GATE in pod.scheduling_gates and not pod.deleted]
    queued = st.condition("Queued")
    waiting = queued is not None and queued.status == "True" and queued.reason == WAITING_FOR_ADMISSION
    if not gated:
        if waiting:
            msg = f"attempt {p.attempt} admitted by queue {p.spec.scheduling.queue_name}"
            st.set_condition("Queued", False, "Admitted", msg, now)
            d.events.append(Event("Normal", "Admitted", msg))
        return None
    why = p.admission or "waiting for the queue to admit the pod group"
    msg = (
        f"attempt {p.attempt}: {len(gated)} of {p.spec.parallelism.nodes} pods wait for admission by queue "
        f"{p.spec.scheduling.queue_name} ({why})"
    )
    if not waiting:
        d.events.append(Event("Normal", "Queued", msg))
    st.phase, st.message = QUEUED, msg
    st.set_condition("Queued", True, WAITING_FOR_ADMISSION, msg, now)
    st.set_condition("Running", False, WAITING_FOR_ADMISSION, msg, now)
    d.requeue_after_seconds = WAIT_RECHECK_SECONDS  # the Workload's message changes without a pod event
    return d


def unplaceable_gang(p: _Pass) -> Decision | None:
    """Nothing admits a gang whole without a queue: pods the scheduler cannot place (PodScheduled False,
    Unschedulable) while the others hold their nodes would wait in rendezvous, and two such jobs can hold each other's
    nodes. After spec.scheduling.scheduleTimeoutSeconds the attempt's pods (and spares) go, the job is Queued with the
    scheduler's words and tries again as a new attempt after scheduling.requeueBackoffSeconds, doubled per
    requeue; no restart is spent. Pods a queue gates (SchedulingGated) are not Unschedulable and never time out here."""
    timeout = p.spec.scheduling.schedule_timeout_seconds
    st, now, d = p.st, p.now, p.d
    stuck = [pod for pod in p.current if pod.phase == "Pending" and pod.unschedulable and not pod.deleted]
    if timeout is None or st.launched_attempt != p.attempt or not stuck:
        st.unschedulable_since = None
        return None
    since = st.unschedulable_since = st.unschedulable_since or now
    deadline = add_seconds(since, timeout)
    why = f"{len(stuck)} of {p.spec.parallelism.nodes} pods unschedulable: {stuck[0].unschedulable}"
    if now < deadline:
        d = observe(p)
        st.message = f"{st.message}; {why}; the gang is taken down at {deadline} unless placed"
        d.requeue_after_seconds = max(1.0, seconds_until(now, deadline, timeout))
        return d
    requeues = st.requeues = (st.requeues or 0) + 1
    delay = backoff_seconds(p.spec.scheduling.requeue_backoff_seconds, requeues - 1)
    msg = (
        f"attempt {p.attempt} could not be placed whole within scheduling.scheduleTimeoutSeconds={timeout} "
        f"({why}); its pods were removed so they hold no nodes; trying again after {delay:.0f} s "
        f"(requeue {requeues}, no restart spent)"
    )
    d.delete_pods, d.force_delete_pods = teardown(p.pods, p.nodes)
    st.attempt, st.phase, st.message = p.attempt + 1, QUEUED, msg
    st.restart_not_before = add_seconds(now, delay) if delay > 0 else None
    st.unschedulable_since = None
    st.children = None  # a whole new gang (in place too: none of this one ever ran)
    st.set_condition("Queued", True, "GangUnschedulable", msg, now)
    st.set_condition("Running", False, "GangUnschedulable", msg, now)
    d.events.append(Event("Warning", "GangUnschedulable", msg))
    d.requeue_after_seconds = max(delay, WAIT_FOR_PODS_SECONDS)
    return d


def scaled_spec(spec: JobSpec, st: JobStatus) -> JobSpec:
    """The spec the gang runs: the parallelism at status.activeNodes while an elastic job is shrunk
    (ParallelismSpec.at_nodes: same global batch), else `spec` itself."""
    if st.active_nodes is None or spec.parallelism.elastic is None:
        return spec
    scaled = spec.parallelism.at_nodes(st.active_nodes)
    return spec if scaled is None else spec.model_copy(update={"parallelism": scaled})


def _layout_words(before: JobSpec, after: JobSpec) -> str:
    b, a = before.parallelism, after.parallelism
    return (
        f"data {b.data_degree()} -> {a.data_degree()}, microBatches {b.micro_batches} -> {a.micro_batches}; "
        f"the global batch of {a.data_degree() * a.micro_batches} micro-batches stays"
    )


def _relaunch_at(p: _Pass, nodes: int) -> JobSpec:
    """Take the whole gang down to launch it again on `nodes` nodes (a new attempt, no restart spent); returns the
    spec it will run."""
    st, d = p.st, p.d
    intent = p.intent or p.spec
    d.delete_pods, d.force_delete_pods = teardown(p.pods, p.nodes)
    st.active_nodes = None if nodes == intent.parallelism.nodes else nodes
    st.layout_changes = (st.layout_changes or 0) + 1
    st.grow_after_checkpoint = None
    st.unschedulable_since = None
    st.attempt, st.phase = p.attempt + 1, RESTARTING
    st.children = None  # a gang of another size: every pod new (in place too)
    d.requeue_after_seconds = WAIT_FOR_PODS_SECONDS
    return scaled_spec(intent, st)


def elastic_shrink(p: _Pass) -> Decision | None:
    """spec.parallelism.elastic: a launched gang with pods the scheduler cannot place (a lost node and no spare or
    free node for its replacement) continues, after elastic.shrinkAfterSeconds, on the most nodes it can have:
    at most the nodes its placed pods hold, at least minNodes, with a layout that keeps the global batch. From the
    newest checkpoint, resharded; no restart spent. Hands on when no such layout exists (unplaceable_gang)."""
    intent = p.intent or p.spec
    elastic = intent.parallelism.elastic
    st, now, d = p.st, p.now, p.d
    if elastic is None or st.launched_attempt != p.attempt:
        return None
    stuck = [pod for pod in p.current if pod.phase == "Pending" and pod.unschedulable and not pod.deleted]
    placed = p.spec.parallelism.nodes - len(stuck)
    fits = [n for n in range(elastic.min_nodes, placed + 1) if intent.parallelism.at_nodes(n) is not None]
    if not stuck or not fits:
        return None
    target = max(fits)
    since = st.unschedulable_since = st.unschedulable_since or now
    deadline = add_seconds(since, elastic.shrink_after_seconds)
    why = f"{len(stuck)} of {p.spec.parallelism.nodes} pods unschedulable: {stuck[0].unschedulable}"
    if now < deadline:
        d = observe(p)
        st.message = f"{st.message}; {why}; continues on {target} nodes at {deadline} unless placed"
        d.requeue_after_seconds = max(1.0, seconds_until(now, deadline, elastic.shrink_after_seconds))
        return d
    before = p.spec
    after = _relaunch_at(p, target)
    msg = (
        f"{why} for {elastic.shrink_after_seconds} s (parallelism.elastic.shrinkAfterSeconds): attempt {st.attempt} "
        f"continues on {target} of {intent.parallelism.nodes} nodes from the newest checkpoint "
        f"({_layout_words(before, after)})"
    )
    st.message = msg
    st.set_condition("Resized", True, "Shrunk", msg, now)
    st.set_condition("Restarting", True, "Shrunk", msg, now)
    st.set_condition("Running", False, "Shrunk", msg, now)
    d.events.append(Event("Warning", "Shrunk", msg))
    return d


def elastic_grow(p: _Pass) -> Decision | None:
    """A shrunk elastic job with free nodes again grows back (as far as they allow, up to parallelism.nodes) once a
    checkpoint newer than the one it had when the nodes appeared is complete, so the change loses no more than a
    checkpoint interval would: the gang is taken down and launched on more nodes from that checkpoint, resharded;
    no restart spent."""
    intent = p.intent or p.spec
    elastic = intent.parallelism.elastic
    st, now, d = p.st, p.now, p.d
    if elastic is None or st.active_nodes is None or st.phase != RUNNING or p.free_nodes is None:
        return None
    active = st.active_nodes
    fits = [
        n
        for n in range(active + 1, intent.parallelism.nodes + 1)
        if n - active <= p.free_nodes and intent.parallelism.at_nodes(n) is not None
    ]
    if not fits:
        st.grow_after_checkpoint = None
        return None
    target = max(fits)
    step = st.last_checkpoint.step if st.last_checkpoint and st.last_checkpoint.step else 0
    if st.grow_after_checkpoint is None:
        st.grow_after_checkpoint = step
        d.events.append(
            Event(
                "Normal",
                "GrowPlanned",
                f"{p.free_nodes} free node(s): grows from {active} to {target} nodes after the next checkpoint "
                f"(newer than step {step})",
            )
        )
        return None
    if step <= st.grow_after_checkpoint:
        return None
    before = p.spec
    after = _relaunch_at(p, target)
    msg = (
        f"attempt {st.attempt} grows from {active} to {target} of {intent.parallelism.nodes} nodes from the "
        f"checkpoint of step {step} ({_layout_words(before, after)})"
    )
    st.message = msg
    full = st.active_nodes is None
    st.set_condition("Resized", not full, "Grown", msg, now)
    st.set_condition("Restarting", True, "Grown", msg, now)
    st.set_condition("Running", False, "Grown", msg, now)
    d.events.append(Event("Normal", "Grown", msg))
    return d


def observe(p: _Pass) -> Decision:
    st, attempt, now = p.st, p.attempt, p.now
    if p.in_place and p.spec.resilience.spare_nodes:
        spares = set(p.spares())
        st.spares_ready = sum(1 for pod in p.pods if pod.name in spares and pod.phase == "Running" and not pod.deleted)
    phases = [pod.phase for pod in p.current]
    if phases and all(ph == "Succeeded" for ph in phases):
        msg = f"all {len(phases)} pods of attempt {attempt} succeeded"
        st.phase, st.message, st.completion_time = SUCCEEDED, msg, now
        final_progress(st, p.current, p.spec, plan.checkpoint_root(p.spec, p.job.name), now)
        st.set_condition("Running", False, "Completed", msg, now)
        st.set_condition("Succeeded", True, "Completed", msg, now)
        p.d.events.append(Event("Normal", "Succeeded", msg))
    elif phases and all(ph in ("Running", "Succeeded") for ph in phases):
        if st.phase != RUNNING:
            p.d.events.append(Event("Normal", "Running", f"all {len(phases)} pods of attempt {attempt} running"))
        st.phase, st.message = RUNNING, f"attempt {attempt}: training"
        st.set_condition("Running", True, "PodsRunning", f"all pods of attempt {attempt} are running", now)
        preempted = st.condition("Preempted")
        if preempted is not None and preempted.status == "True":
            st.set_condition("Preempted", False, "Resumed", f"attempt {attempt} runs again after the preemption", now)
    else:
        waiting = sum(1 for ph in phases if ph == "Pending")
        st.phase = PENDING
        st.message = f"attempt {attempt}: {waiting} of {p.spec.parallelism.nodes} pods pending"
    return p.d


def held_edits(p: _Pass) -> Decision | None:
    """Without the webhook an edit of what the gang is reaches the API: say that it waits, and for what."""
    st, held = p.st, list(p.held)
    before = st.condition("SpecApplied")
    if held:
        fields = ", ".join(held)
        msg = f"{fields} edited while the job is {st.phase}: not applied; it applies {WHEN_HELD}"
        if before is None or before.status != "False" or before.message != msg:
            p.d.events.append(Event("Warning", "SpecEditHeld", msg))
        st.set_condition("SpecApplied", False, "HeldUntilResume", msg, p.now)
    elif before is not None and before.status == "False" and st.phase != SUSPENDED:
        st.set_condition("SpecApplied", True, "Applied", "the gang is launched from the spec as edited", p.now)
    return None


STEPS: tuple[Callable[[_Pass], Decision | None], ...] = (
    held_edits,
    suspend,
    resume,
    waiting_for_old_gang,
    back_off,
    pre_encoding,
    launch,
    keep_spares,
    failure,
    awaiting_admission,
    elastic_shrink,
    unplaceable_gang,
    elastic_grow,
)


# ---- the reconcile decision ------------------------------------------------------------------------------------


def finished(st: JobStatus, pods: list[PodObservation]) -> Decision | None:
    """Finished jobs keep their record; leftover running pods (a failed gang) are cleaned up."""
    if st.phase not in TERMINAL:
        return None
    return Decision(status=st, delete_pods=[p.name for p in pods if p.unfinished and not p.deleted])


def invalid_spec(st: JobStatus, problems: list[str], now: str) -> Decision | None:
    if not problems:
        return None
    msg = "; ".join(problems)
    st.phase, st.message, st.completion_time = FAILED, f"invalid spec: {msg}", now
    st.set_condition("Valid", False, "InvalidSpec", msg, now)
    st.set_condition("Failed", True, "InvalidSpec", msg, now)
    return Decision(status=st, events=[Event("Warning", "InvalidSpec", msg)])


# The API's field paths in the children plan.py renders -> the spec field the user wrote (first match wins).
# Pod: the trainer is containers[0]; volumes/mounts [1] are the node-local checkpoints, [2] the persistent claim.
_SPEC_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("Pod", r"^spec\.containers\[0\]\.image$", "spec.image"),
    ("Pod", r"^spec\.containers\[0\]\.resources\.(?:limits|requests)\[(cpu|memory)\]", r"spec.resources.\1"),
    ("Pod", r"^spec\.containers\[0\]\.resources\.(?:limits|requests)", "spec.scheduling.gpuResource"),
    ("Pod", r"^spec\.containers\[0\]\.volumeMounts\[1\]", "spec.checkpoint.localPath"),
    ("Pod", r"^spec\.containers\[0\]\.volumeMounts\[2\]", "spec.checkpoint.persistentPath"),
    ("Pod", r"^spec\.containers\[0\]\.ports", "spec.metricsPort"),
    ("Pod", r"^spec\.volumes\[1\]", "spec.checkpoint.localPath"),
    ("Pod", r"^spec\.volumes\[2\]", "spec.checkpoint.persistentClaim"),
    ("Pod", r"^spec\.nodeSelector(.*)$", r"spec.scheduling.nodeSelector\1"),
    ("Pod", r"^spec\.tolerations(.*)$", r"spec.scheduling.tolerations\1"),
    ("Pod", r"^spec\.(priorityClassName|schedulerName)$", r"spec.scheduling.\1"),
    ("Pod", r"^metadata\.labels", "spec.scheduling.queueName"),
    ("Pod", r"^spec\.(?:hostname|subdomain)$", "metadata.name"),
    ("Service", r"^spec\.ports", "spec.metricsPort"),
    ("*", r"^metadata\.name$", "metadata.name"),
)


def spec_field(kind: str, api_field: str) -> str | None:
    """The spec field behind an API field path of a child (`spec.containers[0].image` of a Pod -> `spec.image`);
    None when the table does not know it."""
    for table_kind, pattern, spec_path in _SPEC_FIELDS:
        if table_kind in (kind, "*"):
            match = re.match(pattern, api_field)
            if match:
                return match.expand(spec_path)
    return None


def _refusal_text(err: ChildRefused) -> str:
    """`<field>: <problem> (<fix>)` for each of the API's causes; the API's own message when it gave none."""
    if err.conflict:
        return (
            f"metadata.name: {err.kind} {err.name!r} already exists and is not this job's (owned by "
            f"{err.owner or 'nothing'}); the operator neither adopts nor overwrites it (rename the job, or delete "
            f"that {err.kind} and create the job again)"
        )
    fix = f"the API server refused {err.kind} {err.name!r}; fix the field and apply the spec again"
    parts = []
    for api_field, message in err.causes or [("", err.message)]:
        where = spec_field(err.kind, api_field) if api_field else None
        if where is None:
            where = f"{err.kind.lower()}.{api_field}" if api_field else "spec"
            parts.append(f"{where}: {message} ({fix})")
        else:
            parts.append(f"{where}: {message} ({fix}; at {api_field})")
    return "; ".join(parts)


def child_refused(st: JobStatus, err: ChildRefused, children: list[dict], now: str) -> Decision:
    """A launch the API server refused partway: the job Failed in this pass (ChildRefused for an invalid child, its
    Valid condition False so an edited spec is judged again; NameConflict for a name taken by an object the job
    does not own), a Warning event, and every child of the launch deleted except the refused one (it either does
    not exist or is not ours to touch)."""
    st = st.model_copy(deep=True)
    reason = "NameConflict" if err.conflict else "ChildRefused"
    msg = _refusal_text(err)
    st.phase, st.message, st.completion_time = FAILED, msg, now
    st.children = None
    st.set_condition("Created", False, reason, msg, now)
    st.set_condition("Running", False, reason, msg, now)
    st.set_condition("Failed", True, reason, msg, now)
    if not err.conflict:
        st.set_condition("Valid", False, reason, msg, now)
    undo = [
        (c["kind"], c["metadata"]["name"])
        for c in children
        if (c["kind"], c["metadata"]["name"]) != (err.kind, err.name)
    ]
    return Decision(status=st, delete_children=undo, events=[Event("Warning", reason, msg)])


def admit(st: JobStatus, spec: JobSpec, now: str) -> None:
    """A valid spec: the counters a running job always has."""
    if st.condition("Valid") is None:
        st.set_condition("Valid", True, "SpecValid", "spec passed validation", now)
    st.start_time = st.start_time or now
    st.attempt = st.attempt or 0
    st.restarts = st.restarts or 0
    st.total_restarts = st.total_restarts or 0
    st.total_steps = st.total_steps if st.total_steps is not None else spec.training.steps


def reconcile(
    job: plan.JobRef,
    checked: SpecCheck,
    status: JobStatus | None,
    pods: list[PodObservation],
    now: str,
    generation: int | None = None,
    nodes: Mapping[str, NodeObservation] | None = None,
    usable_nodes: list[str] | None = None,
    admission: str | None = None,
    held: Sequence[str] = (),
    encoding: tuple[str, str] | None = None,
    free_nodes: int | None = None,
) -> Decision:
    """`checked`: parse_spec(job's spec), once per pass. `nodes`: the Nodes the unfinished pods are bound to, by
    name (a node not listed is not judged). Pods on a gone node, or on one NotReady for
    spec.resilience.nodeNotReadySeconds (sooner when a pod of the attempt fails), count as lost and are force-deleted
    (no kubelet will confirm). `usable_nodes`: schedulable Ready nodes when known (else no Wait). `held`: edited
    fields the active gang does not take; `checked` is then the effective spec (spec_edits.effective_spec).
    `free_nodes`: Ready schedulable nodes with no pod of the job (when known), where a shrunk elastic job can grow."""
    st = status.model_copy(deep=True) if status is not None else JobStatus()
    valid = st.condition("Valid")
    if (
        st.phase == FAILED
        and valid is not None
        and valid.status == "False"
        and generation is not None
        and st.observed_generation != generation
    ):
        st = JobStatus()  # the spec that failed validation was edited: judge the new one from scratch
    if generation is not None:
        st.observed_generation = generation
    settled = finished(st, pods) or invalid_spec(st, checked.problems, now)
    if settled is not None:
        return settled
    assert checked.spec is not None
    admit(st, checked.spec, now)
    p = _Pass(
        job=job,
        spec=scaled_spec(checked.spec, st),
        intent=checked.spec,
        free_nodes=free_nodes,
        pods=pods,
        now=now,
        nodes=nodes or {},
        usable_nodes=usable_nodes,
        d=Decision(status=st),
        admission=admission,
        held=held,
        encoding=encoding,
    )
    # pods of no current attempt go; on a lost node with grace 0 (no kubelet would confirm)
    p.d.delete_pods, p.d.force_delete_pods = teardown(p.stale, p.nodes)
    for step in STEPS:
        decided = step(p)
        if decided is not None:
            return decided
    return observe(p)
