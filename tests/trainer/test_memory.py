"""Activation memory without processes: the offload policy over schedules, the mechanism and the recompute modes
in one process (same gradients, the accounting moves as the policy says)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from omnitrain.trainer.memory import ActivationMemory, configure_memory, offload_plan, run_block
from omnitrain.trainer.memory.policy import held_micro_batches
from omnitrain.trainer.memory.recompute import keeps_output
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel
from omnitrain.trainer.parallel.schedule import Action, build_schedule

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "parallel"))
import parallel_workers as workers  # noqa: E402

aten = torch.ops.aten


@pytest.mark.parametrize("pp,m", [(2, 3), (4, 4), (4, 8)])
def test_pipeline_aware_policy_on_1f1b(pp, m):
    for rank in range(pp):
        actions = build_schedule(rank, pp, 1, m, "1F1B")
        none, aware, every = (offload_plan(actions, mode) for mode in ("none", "pipelineAware", "all"))
        assert not any(d.offload for d in none.values())
        assert all(d.offload for d in every.values())
        # Without offload, stage s holds pp - s micro-batches at its peak (1F1B); offloading what waits leaves 1.
        assert held_micro_batches(actions, none) == min(pp - rank, m)
        assert held_micro_batches(actions, aware) == 1
        for d in aware.values():
            assert d.forward_at < d.prefetch_at <= d.backward_at
            assert d.offload == (d.actions_between > 0)
        if rank == pp - 1:  # the last stage runs each backward right after its forward
            assert not any(d.offload for d in aware.values())
        else:
            assert sum(d.offload for d in aware.values()) >= m - 1


def test_prefetch_ahead_trades_peak_for_slack():
    actions = build_schedule(0, 4, 1, 8, "1F1B")
    ahead = offload_plan(actions, "pipelineAware", prefetch_ahead=1)
    assert all(d.prefetch_at == d.backward_at - 1 for d in ahead.values() if d.offload)
    # The prefetch for the next backward lands during a forward: two micro-batches at the peak, still under 4.
    assert held_micro_batches(actions, ahead) == 2
    # One process (pipeline 1): every backward follows its forward, nothing waits, nothing is offloaded.
    single = build_schedule(0, 1, 1, 3, "1F1B")
    assert not any(d.offload for d in offload_plan(single, "pipelineAware").values())


def test_policy_on_interleaved_schedule_and_bad_input():
    for rank in range(2):
        actions = build_schedule(rank, 2, 2, 4, "interleaved1F1B")
        aware = offload_plan(actions, "pipelineAware")
        assert held_micro_batches(actions, aware) < held_micro_batches(actions, offload_plan(actions, "none"))
    with pytest.raises(ValueError, match="unknown offload mode"):
        offload_plan([], "some")
    with pytest.raises(ValueError, match="without a backward"):
        offload_plan([Action("F", 0, 0)], "all")


def test_executor_must_follow_the_schedule():
    memory = ActivationMemory("all")
    memory.start_step([Action("F", 0, 0), Action("B", 0, 0)])
    with pytest.raises(RuntimeError, match="the schedule has F0.0"):
        with memory.forward(0, 1):
            pass


MODES = [(o, r) for o in ("none", "all") for r in ("none", "selective", "full")]


def _one_step(offload: str, recompute: str, m: int = 3):
    torch.manual_seed(0)
    plan = configure_memory(
        setup_parallel(workers.build_model(), layout=ParallelLayout(micro_batches=m)), offload, recompute, account=True
    )
    loss = plan.run_step(workers.global_microbatches(m, seed=5), workers.loss_fn)
    grads = {n: p.grad.clone() for n, p in plan.model.named_parameters() if p.grad is not None}
    return float(loss), grads, plan.memory.account


def test_every_mode_gives_the_same_gradients_in_one_process():
    loss, want, _ = _one_step("none", "none")
    accounts = {}
    for mode in MODES:
        got_loss, got, accounts[mode] = _one_step(*mode)
        assert got_loss == pytest.approx(loss, rel=1e-6), mode
        assert sorted(got) == sorted(want)
        for name in want:
            # Offloaded tensors come back contiguous: a different kernel path may round differently.
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-9, msg=lambda s: f"{mode}: {s}")
    for offload in ("none", "all"):
        peaks = [accounts[offload, r].peak_device for r in ("full", "selective", "none")]
        assert peaks == sorted(set(peaks)), peaks  # full < selective < none
    everything = accounts["all", "none"]
    assert everything.offloaded == everything.prefetched > 0 and everything.late_reloads == 0
    assert everything.device == everything.host == 0  # released after the backwards
    assert accounts["none", "none"].offloaded == 0


def test_selective_policy_keeps_matmuls_and_attention():
    assert keeps_output(aten.mm.default) and keeps_output(aten.addmm.default)
    assert keeps_output(aten._scaled_dot_product_flash_attention_for_cpu.default)
    assert not keeps_output(aten.gelu.default) and not keeps_output(aten.native_layer_norm.default)
    assert not keeps_output(aten.mul.Tensor)


class _Stateful(torch.nn.Module):
    """Reads per-call state set on the module, like UlyssesAttention.packed_tokens."""

    def __init__(self):
        super().__init__()
        self.packed_tokens = 2
        self.calls = 0

    def forward(self, x, ctx):
        self.calls += 1
        return (x * ctx["scale"]).sin() * self.packed_tokens


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recompute_reruns_with_the_forwards_module_state(mode):
    block = _Stateful()
    x = torch.randn(5, requires_grad=True)
    scale = torch.randn(5, requires_grad=True)
    run_block(block, x, {"scale": scale}, mode).sum().backward()
    block.packed_tokens = 7  # another micro-batch's forward ran in between
    x2, scale2 = x.detach().clone().requires_grad_(), scale.detach().clone().requires_grad_()
    block.calls = 0
    out = run_block(block, x2, {"scale": scale2}, mode)
    block.packed_tokens = 99
    out.sum().backward()
    assert block.calls == 2 and block.packed_tokens == 99  # recomputed in the backward, state put back after
    # ... and the recomputation used the forward's value (7), not the current one
    torch.testing.assert_close(x2.grad, 7 * scale2.detach() * (x2 * scale2).detach().cos())
    torch.testing.assert_close(scale2.grad, 7 * x2.detach() * (x2 * scale2).detach().cos())


def test_spec_rejects_offload_that_cannot_take_effect():
    from omnitrain.spec import JobSpec, validate_job_spec

    def errors(**memory):
        spec = JobSpec.model_validate(
            {"memory": memory, "parallelism": {"gpusPerNode": 2, "pipeline": 2, "microBatches": 2}}
        )
        return [e for e in validate_job_spec(spec) if e.field == "spec.memory.offload"]

    assert not errors(offload="pipelineAware", recompute="selective")
    single = JobSpec.model_validate({"memory": {"offload": "pipelineAware"}})
    assert [e.field for e in validate_job_spec(single)] == ["spec.memory.offload"]
    assert "pipeline=1" in str(validate_job_spec(single)[0])
    assert not validate_job_spec(JobSpec.model_validate({"memory": {"offload": "all", "recompute": "full"}}))


def test_trainer_applies_spec_memory_in_one_process(tmp_path, monkeypatch):
    from train_helpers import config_dict

    from omnitrain import trainer
    from omnitrain.spec import TrainerConfig
    from omnitrain.trainer.train import train

    configured = []

    def spy(plan, offload, recompute, *args, **kwargs):
        configured.append(configure_memory(plan, offload, recompute, *args, **kwargs))
        return configured[-1]

    monkeypatch.setattr(trainer.memory, "configure_memory", spy)
    torch.set_num_threads(1)
    plain = train(TrainerConfig.model_validate(config_dict(tmp_path, steps=3)), callbacks=[], log=lambda *a, **k: 0)
    data = config_dict(tmp_path, steps=3)
    data["spec"]["memory"] = {"offload": "all", "recompute": "selective"}
    offloaded = train(TrainerConfig.model_validate(data), callbacks=[], log=lambda *a, **k: 0)
    assert offloaded.losses == pytest.approx(plain.losses, rel=1e-5)
    plan = configured[-1]
    assert plan.runner.recompute == "selective" and plan.memory.account.offloaded > 0
    assert configured[0].memory is None  # offload none: no hooks at all
