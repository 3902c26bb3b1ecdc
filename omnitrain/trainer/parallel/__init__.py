"""3D parallelism for the trainer: data x pipeline x tensor + Ulysses sequence parallel on one DeviceMesh.

    plan = setup_parallel(model, trainer_config)     # once, after building the model with the run's seed
    optimizer = AdamW(plan.parameters_for_optimizer())
    index, count = plan.data_shard                   # which data-parallel shard this rank reads
    loss = plan.run_step(microbatches, loss_fn)      # microbatches: tuples of model.embed args
    plan.clip_grad_norm_(max_norm); optimizer.step(); optimizer.zero_grad()

Modules: layout (rank order, checks), parallelize (applies the layout), plan (the step), ulysses, schedule
(pipeline schedules as data), pipeline (runs them), testing (spawn helper for multi-process tests).
"""

from omnitrain.trainer.parallel.layout import MESH_DIMS, ParallelLayout, RankCoords, rank_coords
from omnitrain.trainer.parallel.parallelize import init_distributed, setup_parallel
from omnitrain.trainer.parallel.plan import ParallelPlan

__all__ = [
    "MESH_DIMS",
    "ParallelLayout",
    "ParallelPlan",
    "RankCoords",
    "init_distributed",
    "rank_coords",
    "setup_parallel",
]
