"""Rank 0's metrics endpoint -> status fields (pure: exposition text in, status patch out)."""

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from omnitrain import contract
from omnitrain.operator.progress import parse_progress, progress_status
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus, LastCheckpoint

SPEC = JobSpec.model_validate({})


def exposition(step=None, checkpoint=None, goodput=None, badput=None) -> str:
    r = CollectorRegistry()
    if step is not None:
        Gauge(contract.METRIC_STEP, "", ["omnitrain_job"], registry=r).labels("j").set(step)
        Gauge(contract.METRIC_TOTAL_STEPS, "", ["omnitrain_job"], registry=r).labels("j").set(100)
    if checkpoint is not None:
        Gauge(contract.METRIC_LAST_CHECKPOINT_STEP, "", ["omnitrain_job"], registry=r).labels("j").set(checkpoint)
    if goodput is not None:
        Gauge(contract.METRIC_GOODPUT, "", ["omnitrain_job"], registry=r).labels("j").set(goodput)
    if badput:
        g = Gauge(contract.METRIC_BADPUT, "", ["omnitrain_job", "cause"], registry=r)
        for cause, seconds in badput.items():
            g.labels("j", cause).set(seconds)
    Gauge("omnitrain_unrelated", "", registry=r).set(3)
    return generate_latest(r).decode()


def test_step_checkpoint_and_goodput_reach_status():
    metrics = parse_progress(
        exposition(step=12, checkpoint=10, goodput=0.91234, badput={"startup": 4.04, "recovery": 0.0})
    )
    new = progress_status(metrics, JobStatus(), SPEC, "/mnt/ckpt/j", "t1")
    assert new.current_step == 12 and new.total_steps == 100
    assert new.last_checkpoint == LastCheckpoint(step=10, path="/mnt/ckpt/j", time="t1")
    assert new.goodput == {
        "ratio": 0.9123,
        "reservedRatio": 0.9123,  # no spares: nothing reserved beyond the gang
        "badputSeconds": {"recovery": 0.0, "startup": 4.0},
    }
    # nothing new: the same status (the operator does not write status every resync)
    assert progress_status(metrics, new, SPEC, "/mnt/ckpt/j", "t2") == new


def test_no_checkpoint_yet_and_no_goodput_yet_leave_status_alone():
    # the trainer reports 0 until its first checkpoint completes; goodput is absent until first computed
    new = progress_status(parse_progress(exposition(step=3, checkpoint=0)), JobStatus(), SPEC, "/mnt/ckpt/j", "t1")
    assert new.to_wire() == {"currentStep": 3, "totalSteps": 100}


def test_broken_endpoint_text_is_no_news():
    status = JobStatus(current_step=5)
    assert progress_status(parse_progress(""), status, SPEC, "/x", "t") == status


def test_hot_spares_count_as_reserved_capacity_not_productive():
    spec = JobSpec.model_validate(
        {"parallelism": {"nodes": 4, "gpusPerNode": 1}, "resilience": {"restartMode": "InPlace", "spareNodes": 1}}
    )
    new = progress_status(parse_progress(exposition(step=3, goodput=0.9)), JobStatus(), spec, "/x", "t")
    assert new.goodput is not None and new.goodput["ratio"] == 0.9
    assert new.goodput["reservedRatio"] == round(0.9 * 4 / 5, 4)
