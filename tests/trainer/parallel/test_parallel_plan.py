"""Pure parts of the parallel layer (rank order, checks, pipeline schedules) and state resharding across layouts."""

from __future__ import annotations

import parallel_workers as workers
import pytest
import torch

from omnitrain.spec import JobSpec, ParallelismSpec, RunInfo, TrainerConfig
from omnitrain.trainer.parallel import ParallelLayout, rank_coords, setup_parallel
from omnitrain.trainer.parallel.layout import check_layout, global_rank
from omnitrain.trainer.parallel.schedule import (
    build_schedule,
    check_schedule,
    interleaved_one_f_one_b,
    messages_in_order,
    one_f_one_b,
    split_blocks,
)
from omnitrain.trainer.parallel.testing import run_on_ranks


def test_rank_order_keeps_tensor_and_ulysses_groups_on_consecutive_ranks():
    layout = ParallelLayout(dp=2, pp=2, ulysses=2, tp=2)
    coords = [rank_coords(r, layout) for r in range(16)]
    assert [c.tp for c in coords[:4]] == [0, 1, 0, 1]
    assert [c.ulysses for c in coords[:4]] == [0, 0, 1, 1]
    assert {c.pp for c in coords[:4]} == {0} and coords[4].pp == 1
    assert {c.dp for c in coords[:8]} == {0} and {c.dp for c in coords[8:]} == {1}
    assert [global_rank(c, layout) for c in coords] == list(range(16))
    # A node of 4 GPUs holds whole TP x Ulysses groups.
    for node in range(4):
        ranks = range(node * 4, node * 4 + 4)
        assert len({(rank_coords(r, layout).dp, rank_coords(r, layout).pp) for r in ranks}) == 1


def test_bad_layouts_name_the_field():
    dims = dict(num_heads=4, depth=4, mlp_hidden=64)
    with pytest.raises(ValueError, match="spec.parallelism.data: .* 4 processes"):
        check_layout(ParallelLayout(dp=2, tp=1), 4, **dims)
    with pytest.raises(ValueError, match="spec.parallelism.tensor/ulysses: numHeads=4"):
        check_layout(ParallelLayout(tp=2, ulysses=4), 8, **dims)
    with pytest.raises(ValueError, match="spec.parallelism.pipeline: .* 8 stages"):
        check_layout(ParallelLayout(pp=4, virtual_stages=2, schedule="interleaved1F1B"), 4, **dims)
    with pytest.raises(ValueError, match="spec.parallelism.microBatches: .* multiple"):
        check_layout(ParallelLayout(pp=2, virtual_stages=2, schedule="interleaved1F1B", micro_batches=3), 2, **dims)
    with pytest.raises(ValueError, match="spec.parallelism.pipelineSchedule"):
        check_layout(ParallelLayout(pp=2, virtual_stages=2), 2, **dims)


def test_split_blocks_is_contiguous_and_complete():
    assert [list(r) for r in split_blocks(10, 4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    with pytest.raises(ValueError):
        split_blocks(3, 4)


@pytest.mark.parametrize(
    "pp,v,m", [(2, 1, 1), (2, 1, 5), (4, 1, 8), (2, 2, 4), (4, 2, 8), (3, 3, 6), (2, 4, 2), (4, 4, 16)]
)
def test_schedules_run_everything_once_in_dependency_order(pp, v, m):
    kind = "interleaved1F1B" if v > 1 else "1F1B"
    schedules = [build_schedule(r, pp, v, m, kind) for r in range(pp)]
    check_schedule(pp, v, m, schedules)
    assert messages_in_order(pp, v, m, schedules)  # so NCCL (no tags) pairs the same messages as gloo


def _peak_in_flight(actions) -> int:
    live = peak = 0
    for a in actions:
        live += 1 if a.kind == "F" else -1
        peak = max(peak, live)
    return peak


def test_1f1b_bounds_activations_in_flight_by_the_stage_distance():
    pp, m = 4, 12
    for rank in range(pp):
        assert _peak_in_flight(one_f_one_b(rank, pp, m)) == pp - rank  # GPipe would hold all 12
    assert [str(a) for a in one_f_one_b(1, 3, 3)] == ["F1.0", "F1.1", "B1.0", "F1.2", "B1.1", "B1.2"]


def test_interleaved_visits_chunks_in_groups_of_pp():
    actions = interleaved_one_f_one_b(0, 2, 2, 4)
    forwards = [(a.chunk, a.micro_batch) for a in actions if a.kind == "F"]
    assert forwards == [(0, 0), (0, 1), (2, 0), (2, 1), (0, 2), (0, 3), (2, 2), (2, 3)]
    with pytest.raises(ValueError, match="multiple of pipeline"):
        interleaved_one_f_one_b(0, 2, 2, 3)


def test_single_process_plan_from_trainer_config():
    spec = JobSpec(parallelism=ParallelismSpec(micro_batches=2))
    config = TrainerConfig(spec=spec, run=RunInfo(job_name="t"))
    model = workers.build_model()
    plan = setup_parallel(model, config)
    assert (plan.dp_size, plan.pp_size, plan.tp_size, plan.ulysses_size) == (1, 1, 1, 1)
    assert plan.is_first_stage and plan.is_last_stage and plan.data_shard == (0, 1)
    batches = workers.global_microbatches(2)
    loss = plan.run_step(batches, workers.loss_fn)
    # Same as plain autograd on the model's own forward.
    reference = workers.build_model()
    expected = sum(workers.loss_fn(reference(*mb), mb) for mb in batches) / 2
    expected.backward()
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    norm = plan.clip_grad_norm_(1e-3)
    assert float(norm) > 1e-3
    assert float(plan.grad_norm()) == pytest.approx(1e-3, rel=1e-3)


def test_load_full_state_dict_refuses_a_mismatch_and_changes_nothing():
    plan = setup_parallel(workers.build_model(), layout=ParallelLayout())
    before = plan.full_state_dict()
    broken = dict(before)
    broken.pop("head.proj.weight")
    broken["blocks.0.attn.q.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="missing \\['head.proj.weight'\\].*blocks.0.attn.q.weight"):
        plan.load_full_state_dict(broken)
    for name, value in plan.full_state_dict().items():
        assert torch.equal(value, before[name])


@pytest.mark.slow
@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
def test_state_saved_under_one_layout_loads_under_another():
    """Checkpoint resharding: full state from FSDP x TP (4 ranks) into pipeline x Ulysses (4 ranks)."""
    trained = run_on_ranks(workers.train, 4, ParallelLayout(dp=2, tp=2, data_sharding="fsdp"))[0]["params"]
    target = ParallelLayout(pp=2, ulysses=2, micro_batches=2)
    got = run_on_ranks(workers.load_and_step, 4, target, trained)
    want = workers.load_and_step(0, 1, ParallelLayout(micro_batches=2), trained)
    for rank_result in got:
        assert rank_result["loss"] == pytest.approx(want["loss"], rel=1e-5)
        for name, value in want["params"].items():
            assert torch.equal(rank_result["params"][name], value), name
        for name, value in want["grads"].items():
            torch.testing.assert_close(rank_result["grads"][name], value, rtol=2e-4, atol=2e-6, msg=name)
