"""Ulysses with the "flex" attention backend trains like one process with the math reference: the mask comes from
the whole sequence's cu_seqlens after the all-to-all, and the Ulysses padding is its own segment.

On CPU FlexAttention has no backward, so a training step under "flex" runs its mask rule densely (the kernel's
forward is tested in tests/model/test_flex_attention.py): this checks the rule under Ulysses, not the kernel."""

from __future__ import annotations

import flex_workers
import pytest
from test_parallel_layouts import assert_runs_match

from omnitrain.trainer.parallel import ParallelLayout
from omnitrain.trainer.parallel.testing import run_on_ranks

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
@pytest.mark.parametrize("kind", ["mmdit", "causal"])  # causal: spec.model.conditionAttention's rule in the mask
def test_ulysses2_under_flex_matches_single_process_math(kind):
    layout = ParallelLayout(ulysses=2, micro_batches=2)
    want = flex_workers.train_with_backend(0, 1, ParallelLayout(micro_batches=2), "math", kind)
    assert_runs_match(run_on_ranks(flex_workers.train_with_backend, 2, layout, "flex", kind), want)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sdpa_mask", "math"])
def test_condition_causal_tp2_under_each_backend_matches_single_process_sdpa_loop(backend):
    """Tensor parallel cuts the heads each backend sees; the condition rule must not care."""
    layout = ParallelLayout(tp=2)
    want = flex_workers.train_with_backend(0, 1, ParallelLayout(), "sdpa_loop", "causal")
    assert_runs_match(run_on_ranks(flex_workers.train_with_backend, 2, layout, backend, "causal"), want)
