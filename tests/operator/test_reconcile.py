"""The operator's decisions, step by step, as pure functions of (spec, status, pods)."""

import dataclasses

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.operator import plan
from omnitrain.operator.handlers import restart_cause
from omnitrain.operator.reconcile import (
    FAILED,
    PENDING,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    parse_spec,
    reconcile,
)
from omnitrain.resilience.classify import PodObservation, observe_node
from omnitrain.status import LastCheckpoint

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
SPEC = {"parallelism": {"nodes": 2, "gpusPerNode": 2}, "resilience": {"maxRestarts": 2}}


def pods(attempt, *phases, codes=None, node="node-a"):
    codes = codes or [None] * len(phases)
    return [
        PodObservation(
            name=plan.pod_name("j", attempt, r),
            attempt=attempt,
            rank=r,
            phase=ph,
            node=f"{node}{r}",
            pod_ip=f"127.0.0.{r + 2}",
            exit_code=c,
        )
        for r, (ph, c) in enumerate(zip(phases, codes))
    ]


def step(spec, status, observed, now="t", nodes=None):
    return reconcile(JOB, parse_spec(spec), status, observed, now, generation=1, nodes=nodes)


def condition(status, type_):
    c = status.condition(type_)
    return None if c is None else c.model_dump(by_alias=True, exclude_none=True)


def deleting(observed, deletion_timestamp=None):
    return [dataclasses.replace(p, deleted=True, deletion_timestamp=deletion_timestamp) for p in observed]


def launched(spec=SPEC):
    d = step(spec, None, [])
    assert d.create_attempt == 0
    return d.status


def test_first_pass_validates_and_creates_attempt_zero():
    d = step(SPEC, None, [])
    assert d.create_attempt == 0 and d.delete_pods == []
    assert d.status.phase == PENDING and d.status.attempt == 0 and d.status.launched_attempt == 0
    assert condition(d.status, "Valid")["status"] == "True"
    assert condition(d.status, "Created")["status"] == "True"
    assert d.status.children.pods == ["j-a0-n0", "j-a0-n1"]
    assert [e.reason for e in d.events] == ["Created"]


def test_invalid_spec_fails_with_the_field_named_and_creates_nothing():
    bad = {"parallelism": {"nodes": 2, "gpusPerNode": 2, "tensor": 2, "pipeline": 3}}
    d = step(bad, None, [])
    assert d.create_attempt is None and d.delete_pods == []
    assert d.status.phase == FAILED
    valid = condition(d.status, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.parallelism" in valid["message"]
    assert d.events[0].type == "Warning" and d.events[0].reason == "InvalidSpec"
    # schema-level problems (as if the API server let one through) also name the field
    d = step({"training": {"steps": "many"}}, None, [])
    assert d.status.phase == FAILED and "spec.training.steps" in d.status.message


def test_restart_mid_launch_recreates_only_what_is_missing():
    # status was never written (operator died after creating one pod): create again; AlreadyExists is fine
    d = step(SPEC, None, pods(0, "Pending"))
    assert d.create_attempt == 0


def test_pending_running_succeeded_transitions():
    st = launched()
    d = step(SPEC, st, pods(0, "Pending", "Running"))
    assert d.create_attempt is None and d.status.phase == PENDING
    d = step(SPEC, d.status, pods(0, "Running", "Running"), now="t2")
    assert d.status.phase == RUNNING and condition(d.status, "Running")["status"] == "True"
    assert [e.reason for e in d.events] == ["Running"]
    again = step(SPEC, d.status, pods(0, "Running", "Running"), now="t3")
    assert again.events == [] and condition(again.status, "Running")["lastTransitionTime"] == "t2"
    d = step(SPEC, again.status, pods(0, "Succeeded", "Succeeded"), now="t4")
    assert d.status.phase == SUCCEEDED and d.status.completion_time == "t4"
    assert condition(d.status, "Succeeded")["status"] == "True"
    assert condition(d.status, "Running")["status"] == "False"
    done = step(SPEC, d.status, pods(0, "Succeeded", "Succeeded"))
    assert done.create_attempt is None and done.status == d.status


def test_retryable_failure_restarts_the_gang_once_old_pods_are_gone():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    d = step(SPEC, st, pods(0, "Running", "Failed", codes=[None, ExitCode.ERROR]))
    assert d.status.phase == RESTARTING and d.status.attempt == 1 and d.status.restarts == 1
    assert sorted(d.delete_pods) == ["j-a0-n0", "j-a0-n1"] and d.create_attempt is None
    assert d.status.last_failure.pod == "j-a0-n1" and d.status.last_failure.exit_code == 1
    assert condition(d.status, "Restarting")["status"] == "True"
    # the old gang is still terminating: wait, create nothing
    old = deleting(pods(0, "Running", "Failed"))
    w = step(SPEC, d.status, old)
    assert w.create_attempt is None and w.delete_pods == [] and w.requeue_after_seconds
    # gone: the next attempt is created
    n = step(SPEC, w.status, [])
    assert n.create_attempt == 1 and n.status.phase == PENDING and n.status.launched_attempt == 1
    assert condition(n.status, "Restarting")["status"] == "False"


def test_permanent_exit_code_fails_the_job_and_stops_the_other_pods():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    msg = TerminationMessage(reason="ConfigError", message="data.path has no shards").to_json()
    observed = pods(0, "Running", "Failed", codes=[None, ExitCode.CONFIG])
    observed[1] = dataclasses.replace(observed[1], termination_message=msg)
    d = step(SPEC, st, observed)
    assert d.status.phase == FAILED and d.delete_pods == ["j-a0-n0"]
    failed = condition(d.status, "Failed")
    assert failed["reason"] == "PermanentFailure" and "data.path has no shards" in failed["message"]
    assert d.status.last_failure.reason == "ConfigError"


def test_restart_budget_is_enforced():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status.model_copy(update={"restarts": 2})
    d = step(SPEC, st, pods(0, "Failed", "Running", codes=[ExitCode.HANG, None]))
    assert d.status.phase == FAILED and condition(d.status, "Failed")["reason"] == "RestartLimitExceeded"


def test_lost_pod_counts_as_a_failure():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    d = step(SPEC, st, pods(0, "Running"))
    assert d.status.phase == RESTARTING and d.status.last_failure.reason == "PodLost"


def test_hardware_fault_excludes_the_node():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    d = step(SPEC, st, pods(0, "Failed", "Running", codes=[ExitCode.HARDWARE, None]))
    assert d.status.phase == RESTARTING and d.status.excluded_nodes == ["node-a0"]
    assert d.status.to_wire()["excludedNodes"] == ["node-a0"]
    off = {**SPEC, "resilience": {"isolateNodes": False}}
    st = step(off, launched(off), pods(0, "Running", "Running")).status
    d = step(off, st, pods(0, "Failed", "Running", codes=[ExitCode.HARDWARE, None]))
    assert d.status.phase == RESTARTING and not d.status.excluded_nodes and "excludedNodes" not in d.status.to_wire()


def test_suspend_deletes_pods_and_resume_starts_the_next_attempt():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    suspended = {**SPEC, "suspend": True}
    d = step(suspended, st, pods(0, "Running", "Running"))
    assert d.status.phase == SUSPENDED and sorted(d.delete_pods) == ["j-a0-n0", "j-a0-n1"]
    assert condition(d.status, "Suspended")["status"] == "True" and d.create_attempt is None
    d = step(suspended, d.status, [])
    assert d.status.phase == SUSPENDED and d.events == []
    r = step(SPEC, d.status, [])
    assert r.create_attempt == 1 and r.status.attempt == 1 and r.status.restarts == 0
    assert condition(r.status, "Suspended")["status"] == "False"
    assert [e.reason for e in r.events] == ["Resumed", "Restarted"]


def test_stale_pods_of_older_attempts_are_deleted():
    st = launched().model_copy(update={"attempt": 1, "launched_attempt": 1})
    d = step(SPEC, st, pods(0, "Running") + pods(1, "Running", "Running"))
    assert d.delete_pods == ["j-a0-n0"] and d.status.phase == RUNNING


def test_back_off_delays_the_next_attempt():
    spec = {**SPEC, "resilience": {"maxRestarts": 3, "restartBackoffSeconds": 30}}
    st = step(spec, launched(spec), pods(0, "Running", "Running"), now="2026-01-01T00:00:00Z").status
    d = step(spec, st, pods(0, "Failed", "Running", codes=[ExitCode.ERROR, None]), now="2026-01-01T00:00:00Z")
    assert d.status.phase == RESTARTING and d.status.restart_not_before == "2026-01-01T00:00:30Z"
    early = step(spec, d.status, [], now="2026-01-01T00:00:10Z")
    # one more pass exactly when the back-off ends, not at the next resync
    assert early.create_attempt is None and early.requeue_after_seconds == 20
    late = step(spec, early.status, [], now="2026-01-01T00:00:31Z")
    assert late.create_attempt == 1


def test_hardware_fault_isolates_the_node_and_records_the_class():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    d = step(SPEC, st, pods(0, "Running", "Failed", codes=[None, ExitCode.HARDWARE]))
    assert d.isolate_nodes == ["node-a1"] and d.status.excluded_nodes == ["node-a1"]
    assert d.status.last_failure_class == "Hardware"
    crash = step(SPEC, st, pods(0, "Running", "Failed", codes=[None, ExitCode.ERROR]))
    assert crash.isolate_nodes == [] and crash.status.last_failure_class == "Crash"


def test_pods_stuck_terminating_are_force_deleted_before_the_next_attempt():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    d = step(SPEC, st, pods(0, "Failed", "Running", codes=[ExitCode.ERROR, None]))
    # the deletion timestamp is the end of the grace period; a dead node never confirms
    stuck = deleting(pods(0, "Failed", "Running"), "2026-01-01T00:00:05Z")
    soon = step(SPEC, d.status, stuck, now="2026-01-01T00:00:30Z")
    assert soon.force_delete_pods == [] and soon.requeue_after_seconds and soon.create_attempt is None
    late = step(SPEC, soon.status, stuck, now="2026-01-01T00:01:06Z")
    assert late.force_delete_pods == ["j-a0-n0", "j-a0-n1"] and late.create_attempt is None
    assert step(SPEC, late.status, [], now="2026-01-01T00:01:07Z").create_attempt == 1


def test_an_invalid_spec_that_is_fixed_gets_a_fresh_start():
    bad = {"parallelism": {"nodes": 1, "gpusPerNode": 2, "pipeline": 3}}
    failed = reconcile(JOB, parse_spec(bad), None, [], "t1", generation=1)
    assert failed.status.phase == FAILED and failed.status.observed_generation == 1
    same = reconcile(JOB, parse_spec(bad), failed.status, [], "t2", generation=1)
    assert same.status.phase == FAILED and same.create_attempt is None and same.events == []
    fixed = reconcile(JOB, parse_spec(SPEC), failed.status, [], "t3", generation=2)
    assert fixed.create_attempt == 0 and fixed.status.phase == PENDING
    assert condition(fixed.status, "Valid")["status"] == "True" and condition(fixed.status, "Failed") is None


def test_success_takes_the_last_step_checkpoint_and_goodput_from_rank_zero():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    st.current_step = 8  # the last progress scrape, seconds before the end
    goodput = {"ratio": 0.87, "wallSeconds": 100.0, "productiveSeconds": 87.0, "badputSeconds": {"startup": 13.0}}
    messages = [
        TerminationMessage(reason="Completed", step=40, checkpoint_step=40, goodput=goodput),
        TerminationMessage("Completed"),
    ]
    done = [
        dataclasses.replace(p, termination_message=m.to_json())
        for p, m in zip(pods(0, "Succeeded", "Succeeded"), messages)
    ]
    d = step(SPEC, st, done, now="t9")
    # the trainer's figures, with what the operator adds: no spares, so nothing reserved beyond the gang
    reserved = {**goodput, "reservedRatio": 0.87, "spareNodeSeconds": 0.0}
    assert d.status.phase == SUCCEEDED and d.status.goodput == reserved and d.status.current_step == 40
    assert d.status.last_checkpoint == LastCheckpoint(step=40, path="/mnt/nvme/omnitrain/j", time="t9")
    assert d.status.to_wire()["lastCheckpoint"] == {"step": 40, "path": "/mnt/nvme/omnitrain/j", "time": "t9"}
    # a trainer that wrote no termination message (e.g. a stand-in command) leaves those fields as they were
    plain = step(SPEC, st, pods(0, "Succeeded", "Succeeded")).status.to_wire()
    assert "goodput" not in plain and "lastCheckpoint" not in plain and plain["currentStep"] == 8


def node(name, ready="True"):
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def seen(**nodes):
    """Node objects (None: gone) as the kube layer hands them to reconcile."""
    return {name: observe_node(obj, name) for name, obj in nodes.items()}


def test_a_pod_on_a_deleted_or_not_ready_node_restarts_the_gang_at_once_and_is_force_deleted():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    running = pods(0, "Running", "Running")
    healthy = step(SPEC, st, running, nodes=seen(**{"node-a0": node("node-a0"), "node-a1": node("node-a1")}))
    assert healthy.status.phase == RUNNING
    for gone, what in (
        (None, "deleted"),
        (node("node-a1", "Unknown"), "NotReady"),
        (node("node-a1", "False"), "NotReady"),
    ):
        d = step(SPEC, st, running, nodes=seen(**{"node-a0": node("node-a0"), "node-a1": gone}))
        assert d.status.phase == RESTARTING and d.status.attempt == 1 and d.status.restarts == 1
        failure = d.status.to_wire()["lastFailure"]
        assert failure["reason"] == "NodeLost" and failure["node"] == "node-a1"
        assert "exitCode" not in failure and what in failure["message"]
        assert d.status.last_failure_class == "NodeLost"
        # no kubelet will confirm the deletion of the lost node's pod: grace period 0 now, not 60 s later
        assert d.delete_pods == ["j-a0-n0"] and d.force_delete_pods == ["j-a0-n1"]
    # the next pass: the healthy pod is terminating normally, the lost one is still there (force delete again)
    terminating = deleting(running, "2026-01-01T00:00:05Z")
    w = step(
        SPEC,
        d.status,
        terminating,
        now="2026-01-01T00:00:06Z",
        nodes=seen(**{"node-a0": node("node-a0"), "node-a1": None}),
    )
    assert w.force_delete_pods == ["j-a0-n1"] and w.delete_pods == [] and w.create_attempt is None
    assert w.requeue_after_seconds


def test_a_lost_node_outranks_the_crash_it_caused_but_not_a_permanent_failure():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    nodes = seen(**{"node-a0": node("node-a0"), "node-a1": None})
    # rank 0's collective broke because rank 1's node vanished: the node is the cause
    crashed = step(SPEC, st, pods(0, "Failed", "Running", codes=[ExitCode.ERROR, None]), nodes=nodes)
    assert crashed.status.last_failure.reason == "NodeLost" and crashed.status.phase == RESTARTING
    observed = pods(0, "Failed", "Running", codes=[ExitCode.CONFIG, None])
    permanent = step(SPEC, st, observed, nodes=nodes)
    assert permanent.status.phase == FAILED and permanent.force_delete_pods == ["j-a0-n1"]
    # a node the kube layer did not report is not judged
    assert step(SPEC, st, pods(0, "Running", "Running"), nodes={}).status.phase == RUNNING


def test_wait_keeps_the_job_pending_with_the_reason_and_looks_again():
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    failed = pods(0, "Failed", "Running", codes=[ExitCode.HARDWARE, None])
    # node-a0 is isolated by the failure: one usable node left, two needed
    d = reconcile(JOB, parse_spec(SPEC), st, failed, "t", generation=1, usable_nodes=["node-a0", "node-a1"])
    assert d.status.phase == PENDING and d.status.attempt == 0 and d.status.restarts == 0
    assert d.create_attempt is None and d.delete_pods == [] and d.requeue_after_seconds == 10
    restarting = condition(d.status, "Restarting")
    assert restarting["status"] == "False" and restarting["reason"] == "InsufficientNodes"
    assert condition(d.status, "Failed") is None and d.status.last_failure.pod == "j-a0-n0"
    assert [e.reason for e in d.events] == ["InsufficientNodes"] and d.isolate_nodes == ["node-a0"]
    again = reconcile(JOB, parse_spec(SPEC), d.status, failed, "t2", generation=1, usable_nodes=["node-a0", "node-a1"])
    assert again.status.phase == PENDING and again.events == [] and again.status.last_failure.time == "t"
    # capacity came back: the gang restarts without the isolated node
    go = reconcile(
        JOB, parse_spec(SPEC), again.status, failed, "t3", generation=1, usable_nodes=["node-a0", "node-a1", "node-a2"]
    )
    assert go.status.phase == RESTARTING and go.status.attempt == 1 and go.status.excluded_nodes == ["node-a0"]


def test_a_counted_restart_is_labelled_with_the_failure_that_caused_it():
    # omnitrain_operator_restarts_total{reason} feeds OmniTrainHangDetected and the dashboard's restarts by cause
    st = step(SPEC, launched(), pods(0, "Running", "Running")).status
    watchdog = TerminationMessage(reason="HangDetected", message="rank 1: no heartbeat for 60 s").to_json()
    hung_pods = pods(0, "Running", "Failed", codes=[None, ExitCode.HANG])
    hung_pods[1] = dataclasses.replace(hung_pods[1], termination_message=watchdog)
    hung = step(SPEC, st, hung_pods)
    assert hung.status.total_restarts == 1 and restart_cause(st, hung) == "HangDetected"
    suspended = step({**SPEC, "suspend": True}, hung.status, []).status
    resumed = step(SPEC, suspended, [])
    assert resumed.status.total_restarts == 2 and restart_cause(suspended, resumed) == "Resumed"
