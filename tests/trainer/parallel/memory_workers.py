"""Worker of the multi-process memory tests: one step per (offload, recompute) mode on the same layout and
micro-batches, reporting the loss, the full gradients and this rank's saved-activation accounting."""

from __future__ import annotations

import parallel_workers as workers

from omnitrain.trainer.memory import configure_memory
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel


def step_per_mode(rank: int, world_size: int, layout: ParallelLayout, modes: list[tuple[str, str]]) -> dict:
    everything = workers.global_microbatches(layout.dp * layout.micro_batches, seed=100)
    report = {}
    for offload, recompute in modes:
        plan = configure_memory(setup_parallel(workers.build_model(), layout=layout), offload, recompute, account=True)
        index, _ = plan.data_shard
        m = layout.micro_batches
        loss = plan.run_step(everything[index * m : (index + 1) * m], workers.loss_fn)
        report[(offload, recompute)] = {
            "loss": float(loss),
            "grads": plan.full_state_dict(grads=True),
            "account": plan.memory.account.as_dict(),
            "stage": plan.pp_rank,
        }
    return report
