"""One set of layout rules: the operator's validate_job_spec and the trainer's check_layout refuse the same layouts
with the same messages (both are omnitrain.spec.layout_problems), including the rules that used to live on one
side only (micro-batches vs pipeline stages, schedule vs virtual stages, tensor inside a node)."""

from __future__ import annotations

import pytest

from omnitrain.spec import JobSpec, validate_job_spec
from omnitrain.trainer.parallel.layout import ParallelLayout, check_layout

# Parallelism of the tiny model (hidden 64, 4 heads, depth 4, MLP 256) and the fields each one is refused for.
LAYOUTS = [
    ({"gpusPerNode": 4, "tensor": 2, "ulysses": 2}, []),
    ({"gpusPerNode": 2, "pipeline": 2, "microBatches": 2}, []),
    (
        {"gpusPerNode": 2, "pipeline": 2, "pipelineSchedule": "interleaved1F1B", "virtualStages": 2, "microBatches": 4},
        [],
    ),
    ({"gpusPerNode": 4, "data": 2}, ["spec.parallelism.data"]),
    ({"gpusPerNode": 3, "tensor": 2}, ["spec.parallelism", "spec.parallelism.tensor"]),
    ({"nodes": 2, "gpusPerNode": 1, "tensor": 2}, ["spec.parallelism.tensor"]),
    ({"gpusPerNode": 8, "tensor": 8}, ["spec.parallelism.tensor"]),
    ({"gpusPerNode": 8, "ulysses": 8}, ["spec.parallelism.ulysses"]),
    ({"gpusPerNode": 16, "tensor": 2, "ulysses": 8}, ["spec.parallelism.tensor/ulysses"]),
    (
        {"gpusPerNode": 4, "pipeline": 4, "pipelineSchedule": "interleaved1F1B", "virtualStages": 2, "microBatches": 4},
        ["spec.parallelism.pipeline"],
    ),
    # the micro-batch rules: 1F1B leaves stages idle below `pipeline`; interleaved needs a multiple of it
    ({"gpusPerNode": 2, "pipeline": 2}, ["spec.parallelism.microBatches"]),
    (
        {"gpusPerNode": 2, "pipeline": 2, "pipelineSchedule": "interleaved1F1B", "virtualStages": 2, "microBatches": 3},
        ["spec.parallelism.microBatches"],
    ),
    ({"gpusPerNode": 2, "pipeline": 2, "virtualStages": 2, "microBatches": 2}, ["spec.parallelism.pipelineSchedule"]),
    ({"pipelineSchedule": "interleaved1F1B"}, ["spec.parallelism.virtualStages"]),
    (
        {"gpusPerNode": 4, "pipeline": 2, "ulysses": 2, "microBatches": 2, "elasticUlysses": True},
        ["spec.parallelism.elasticUlysses"],
    ),
    ({"gpusPerNode": 2, "elasticUlysses": True}, ["spec.parallelism.elasticUlysses"]),
    ({"gpusPerNode": 2, "dataSharding": "fsdp", "gradientReduce": "overlapped"}, ["spec.parallelism.gradientReduce"]),
]


@pytest.mark.parametrize(("parallelism", "fields"), LAYOUTS, ids=[str(p) for p, _ in LAYOUTS])
def test_operator_and_trainer_agree_on_layouts(parallelism, fields):
    spec = JobSpec.model_validate({"parallelism": parallelism})
    errors = [e for e in validate_job_spec(spec) if e.field.startswith("spec.parallelism")]
    assert [e.field for e in errors] == fields
    model = spec.model.resolve()
    dims = {"num_heads": model.num_heads, "depth": model.depth, "mlp_hidden": model.mlp_hidden}
    layout = ParallelLayout.from_spec(spec.parallelism)
    if not errors:
        check_layout(layout, spec.parallelism.world_size, **dims)
        return
    with pytest.raises(ValueError) as refused:
        check_layout(layout, spec.parallelism.world_size, **dims)
    assert str(refused.value) == "; ".join(str(e) for e in errors)
    # every message names its field and says what to do
    assert all(str(e).startswith(e.field + ": ") and len(e.message) > 20 for e in errors)


def test_trainer_checks_the_world_torchrun_started():
    """The spec's world is nodes x gpusPerNode; the trainer checks the processes it really has."""
    spec = JobSpec.model_validate({"parallelism": {"gpusPerNode": 2}})
    model = spec.model.resolve()
    with pytest.raises(ValueError, match=r"spec.parallelism.data: .* 3 processes"):
        check_layout(
            ParallelLayout.from_spec(spec.parallelism),
            3,
            num_heads=model.num_heads,
            depth=model.depth,
            mlp_hidden=model.mlp_hidden,
        )
