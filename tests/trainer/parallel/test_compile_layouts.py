"""spec.training.compile under data parallelism: 2 gloo processes with compiled blocks train like one eager process
(losses, gradient norms, the first step's gradients, the parameters after the steps), as the eager layouts do in
test_parallel_layouts.py. The compiled region holds only local ops: the gradient all-reduce runs after backward,
outside it."""

from __future__ import annotations

import parallel_workers as workers
import pytest
from test_parallel_layouts import assert_runs_match, reference

from omnitrain.trainer.compile import compiler_problem
from omnitrain.trainer.parallel import ParallelLayout
from omnitrain.trainer.parallel.testing import run_on_ranks

pytestmark = pytest.mark.slow


LAYOUTS = {
    "dp2": ParallelLayout(dp=2, micro_batches=2),
    "ulysses2": ParallelLayout(ulysses=2, micro_batches=2),  # the all-to-alls in the eager attention core
}


@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
@pytest.mark.skipif(compiler_problem("cpu") is not None, reason="no C++ compiler for inductor")
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_compiled_blocks_train_like_one_eager_process(name):
    layout = LAYOUTS[name]
    results = run_on_ranks(workers.train_compiled, 2, layout)
    assert all(r["graphs"] > 0 for r in results)  # the blocks really ran compiled on both ranks
    assert_runs_match(results, reference(layout.dp * layout.micro_batches))
