"""spec.parallelism.elastic: a job that cannot get its lost node back continues on fewer nodes with the same global
batch, and grows back at the next checkpoint once nodes are free. Pure decisions over observed pods."""

from __future__ import annotations

import pytest
import yaml

from omnitrain.operator import plan
from omnitrain.operator.reconcile import RESTARTING, RUNNING, add_seconds, parse_spec, reconcile, scaled_spec
from omnitrain.resilience.classify import PodObservation
from omnitrain.spec import JobSpec, ParallelismSpec, validate_job_spec
from omnitrain.status import LastCheckpoint

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
T0 = "2026-12-04T10:00:00Z"
NO_ROOM = "0/3 nodes are available: 1 node(s) had untolerated taint, 2 Insufficient nvidia.com/gpu."


def spec(nodes=3, min_nodes=2, micro_batches=2, after=30, mode="Recreate"):
    return {
        "parallelism": {
            "nodes": nodes,
            "gpusPerNode": 1,
            "microBatches": micro_batches,
            "dataSharding": "fsdp",
            "elastic": {"minNodes": min_nodes, "shrinkAfterSeconds": after},
        },
        "scheduling": {"scheduleTimeoutSeconds": 600},
        "resilience": {"maxRestarts": 3, "restartMode": mode},
    }


def pods(attempt, nodes, unplaced=0):
    out = []
    for r in range(nodes):
        name = plan.pod_name("j", attempt, r)
        if r < nodes - unplaced:
            out.append(PodObservation(name=name, attempt=attempt, rank=r, node=f"n{r}"))
        else:
            out.append(PodObservation(name=name, attempt=attempt, rank=r, phase="Pending", unschedulable=NO_ROOM))
    return out


def step(s, status, observed, now, free=None):
    return reconcile(JOB, parse_spec(s), status, observed, now, generation=1, free_nodes=free)


def test_a_layout_on_fewer_nodes_keeps_the_global_batch_or_does_not_exist():
    p = ParallelismSpec(nodes=3, micro_batches=2, elastic={"minNodes": 1})
    two = p.at_nodes(2)
    assert (two.nodes, two.data_degree(), two.micro_batches) == (2, 2, 3)
    assert p.at_nodes(1).micro_batches == 6
    assert ParallelismSpec(nodes=3, micro_batches=1).at_nodes(2) is None  # 3 micro-batches do not split over 2
    tp = ParallelismSpec(nodes=4, gpus_per_node=2, tensor=2, micro_batches=3)
    assert tp.at_nodes(3).micro_batches == 4 and tp.at_nodes(3).data_degree() == 3


def test_the_spec_refuses_an_elastic_range_with_no_layout():
    problems = validate_job_spec(JobSpec.model_validate(spec(micro_batches=1)))
    assert [e.field for e in problems] == ["spec.parallelism.elastic.minNodes"]
    assert "raise microBatches" in problems[0].message
    too_many = validate_job_spec(JobSpec.model_validate(spec(min_nodes=4)))
    assert [e.field for e in too_many] == ["spec.parallelism.elastic.minNodes"]
    assert validate_job_spec(JobSpec.model_validate(spec())) == []


@pytest.mark.parametrize("mode", ["Recreate", "InPlace"])
def test_a_replacement_that_cannot_be_placed_shrinks_the_job_then_it_grows_back_at_the_next_checkpoint(mode):
    s = spec(mode=mode)
    st = step(s, None, [], T0).status
    assert st.launched_attempt == 0
    # attempt 1 after the node was lost: rank 2's new pod has no node
    st.attempt, st.launched_attempt = 1, 1
    st.children = None
    waiting = step(s, st, pods(1, 3, unplaced=1), add_seconds(T0, 10))
    assert waiting.status.active_nodes is None and not waiting.delete_pods
    assert "continues on 2 nodes at " + add_seconds(T0, 40) in waiting.status.message

    shrunk = step(s, waiting.status, pods(1, 3, unplaced=1), add_seconds(T0, 40))
    st = shrunk.status
    assert st.active_nodes == 2 and st.attempt == 2 and st.phase == RESTARTING and st.layout_changes == 1
    assert st.restarts == 0, "a layout change is not a restart"
    assert sorted(shrunk.delete_pods) == [plan.pod_name("j", 1, r) for r in range(3)]
    resized = st.condition("Resized")
    assert resized.status == "True" and resized.reason == "Shrunk"
    assert "continues on 2 of 3 nodes" in resized.message and "microBatches 2 -> 3" in resized.message
    assert [e.reason for e in shrunk.events] == ["Shrunk"]

    # the next pass launches 2 pods; the trainer's config carries the layout that keeps the batch
    launched = step(s, st, [], add_seconds(T0, 41))
    assert launched.create_attempt == 2 and launched.status.children.pods == [plan.pod_name("j", 2, r) for r in (0, 1)]
    runs = scaled_spec(parse_spec(s).spec, launched.status)
    config = yaml.safe_load(plan.render_config_map(JOB, runs, 2)["data"]["config.yaml"])
    assert config["spec"]["parallelism"]["nodes"] == 2 and config["spec"]["parallelism"]["microBatches"] == 3
    assert launched.status.launched_spec["parallelism"]["nodes"] == 3, "the spec as written, not as shrunk"
    running = step(s, launched.status, pods(2, 2), add_seconds(T0, 45))
    st = running.status
    assert st.phase == RUNNING and st.active_nodes == 2

    # a node returns: the job waits for the next checkpoint, then grows
    st.last_checkpoint = LastCheckpoint(step=40, path="/ck", time=T0)
    planned = step(s, st, pods(2, 2), add_seconds(T0, 50), free=1)
    assert planned.status.grow_after_checkpoint == 40 and not planned.delete_pods
    assert [e.reason for e in planned.events] == ["GrowPlanned"]
    same = step(s, planned.status, pods(2, 2), add_seconds(T0, 55), free=1)
    assert not same.delete_pods and same.status.active_nodes == 2
    st = same.status
    st.last_checkpoint = LastCheckpoint(step=50, path="/ck", time=T0)
    grown = step(s, st, pods(2, 2), add_seconds(T0, 60), free=1)
    st = grown.status
    assert st.active_nodes is None and st.attempt == 3 and st.layout_changes == 2 and st.restarts == 0
    assert sorted(grown.delete_pods) == [plan.pod_name("j", 2, r) for r in range(2)]
    resized = st.condition("Resized")
    assert (
        resized.status == "False" and resized.reason == "Grown" and "from the checkpoint of step 50" in resized.message
    )
    again = step(s, st, [], add_seconds(T0, 61))
    assert again.create_attempt == 3 and len(again.status.children.pods) == 3


def test_no_layout_at_or_above_min_nodes_hands_on_to_the_schedule_timeout():
    s = spec(min_nodes=3)
    st = step(s, None, [], T0).status
    d = step(s, st, pods(0, 3, unplaced=1), add_seconds(T0, 100))
    assert d.status.active_nodes is None and "taken down at" in d.status.message


def test_a_free_node_for_growing_has_the_job_s_labels_and_gpus_and_is_ready():
    from omnitrain.operator.kube import _fits

    sched = JobSpec.model_validate({**spec(), "scheduling": {"nodeSelector": {"pool": "a"}}}).scheduling

    def node(labels, gpus="1", ready="True", unschedulable=False):
        return {
            "metadata": {"labels": labels},
            "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {"nvidia.com/gpu": gpus}, "conditions": [{"type": "Ready", "status": ready}]},
        }

    assert _fits(node({"pool": "a"}), "n", sched, 1)
    assert not _fits(node({"pool": "b"}), "n", sched, 1)
    assert not _fits(node({"pool": "a"}, gpus="0"), "n", sched, 1)
    assert not _fits(node({"pool": "a"}, ready="False"), "n", sched, 1)
    assert not _fits(node({"pool": "a"}, unschedulable=True), "n", sched, 1)
