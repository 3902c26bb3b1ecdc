"""Every layout trains like one process: losses, gradient norms, the first step's gradients and the parameters after
the steps match a single-process run over the same packed micro-batches (samples of different lengths)."""

from __future__ import annotations

import functools

import parallel_workers as workers
import pytest
import torch

from omnitrain.trainer.parallel import ParallelLayout
from omnitrain.trainer.parallel.testing import run_on_ranks

pytestmark = pytest.mark.slow

LAYOUTS = {
    "dp2": ParallelLayout(dp=2, micro_batches=2),
    "tp2": ParallelLayout(tp=2),
    "pp2-1f1b": ParallelLayout(pp=2, micro_batches=3),
    "pp2-interleaved": ParallelLayout(pp=2, virtual_stages=2, schedule="interleaved1F1B", micro_batches=4),
    "ulysses2": ParallelLayout(ulysses=2, micro_batches=2),
    "ulysses4": ParallelLayout(ulysses=4, micro_batches=2),  # one head per rank, up to 3 padding tokens
    "fsdp2": ParallelLayout(dp=2, data_sharding="fsdp", micro_batches=2),
    "dp2-ulysses2": ParallelLayout(dp=2, ulysses=2),
    "fsdp2-tp2": ParallelLayout(dp=2, tp=2, data_sharding="fsdp"),
    "fsdp2-pp2": ParallelLayout(dp=2, pp=2, data_sharding="fsdp", micro_batches=2),
    "tp2-ulysses2": ParallelLayout(tp=2, ulysses=2),
    "pp2-ulysses2-interleaved": ParallelLayout(
        pp=2, ulysses=2, virtual_stages=2, schedule="interleaved1F1B", micro_batches=2
    ),
    # The one 8-process test: all three of data x pipeline x tensor at once.
    "dp2-pp2-tp2": ParallelLayout(dp=2, pp=2, tp=2, micro_batches=2),
}


# On the stand-in model, whose `embed.pair` only micro-batches of two samples use: used on some data-parallel
# ranks (m=2: rank 1 holds one) or on none (m=1), where one process leaves its gradient None and AdamW skips it.
UNUSED_PARAMETER_LAYOUTS = {
    "dp2-some": ParallelLayout(dp=2, micro_batches=2),
    "fsdp2-some": ParallelLayout(dp=2, data_sharding="fsdp", micro_batches=2),
    "fsdp2-none": ParallelLayout(dp=2, data_sharding="fsdp"),
}


@functools.cache
def reference(total_micro_batches: int, kind: str = "mmdit") -> dict:
    return workers.reference(ParallelLayout(micro_batches=total_micro_batches), kind=kind)


def assert_same_tensors(got: dict, want: dict, what: str, atol: float) -> None:
    assert sorted(got) == sorted(want), f"{what}: names differ"
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=2e-4, atol=atol, msg=lambda m: f"{what} {name}: {m}")


@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name):
    layout = LAYOUTS[name]
    want = reference(layout.dp * layout.micro_batches)
    results = run_on_ranks(workers.train, layout.world_size, layout)
    assert_runs_match(results, want)
    # The run really changed the model (a test of nothing would pass the comparisons too).
    first = workers.build_model().state_dict()
    assert all(not torch.allclose(first[n], want["params"][n]) for n in first)


# spec.model.conditionAttention: causal under the layouts that cut what the rule reads: Ulysses (attention runs on
# the whole sequence after the all-to-all, is_condition must stay whole; ulysses4 pads), tensor parallel (heads cut)
# and pipeline (each stage's embedder rebuilds the context).
CAUSAL_LAYOUTS = ("ulysses2", "ulysses4", "tp2-ulysses2", "pp2-1f1b")


@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
@pytest.mark.parametrize("name", CAUSAL_LAYOUTS)
def test_condition_causal_layout_matches_single_process(name):
    layout = LAYOUTS[name]
    want = reference(layout.dp * layout.micro_batches, "causal")
    full = reference(layout.dp * layout.micro_batches)["grads"]  # the rule really changed the training
    assert any(not torch.allclose(want["grads"][n], full[n], rtol=1e-2, atol=1e-4) for n in full)
    assert_runs_match(run_on_ranks(workers.train, layout.world_size, layout, 2, "causal"), want)


@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
@pytest.mark.parametrize("name", list(UNUSED_PARAMETER_LAYOUTS))
def test_parameters_unused_on_some_ranks(name):
    layout = UNUSED_PARAMETER_LAYOUTS[name]
    want = reference(layout.dp * layout.micro_batches, "standin")
    assert ("embed.pair.weight" in want["grads"]) == name.endswith("-some")
    assert_runs_match(run_on_ranks(workers.train, layout.world_size, layout, 2, "standin"), want)


def assert_runs_match(results: list[dict], want: dict) -> None:
    for rank, got in enumerate(results):
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-5), f"rank {rank}: {got['describe']}"
        assert got["norms"] == pytest.approx(want["norms"], rel=1e-5), f"rank {rank}: {got['describe']}"
        assert_same_tensors(got["grads"], want["grads"], f"rank {rank} gradient", atol=2e-6)
        # AdamW moves every element by ~lr whatever its gradient's size, so float noise in a near-zero gradient
        # shows up as up to ~1e-3 * lr here: compare parameters at that scale.
        assert_same_tensors(got["params"], want["params"], f"rank {rank} parameter", atol=1e-5 * 5)
