"""Elastic Ulysses (per-micro-batch degree) and the overlapped gradient all-reduce: the planner as a pure function,
the prefetching loader, the checks that refuse unsupported layouts, and multi-process runs that must train exactly
like the fixed degree, the coalesced all-reduce and one process."""

from __future__ import annotations

import parallel_workers as workers
import pytest
import torch
from test_parallel_layouts import assert_runs_match, assert_same_tensors, reference

from omnitrain.spec import JobSpec, ParallelismSpec, validate_job_spec
from omnitrain.trainer.parallel import ParallelLayout
from omnitrain.trainer.parallel.elastic import (
    PrefetchingLoader,
    all_to_all_elements,
    degree_for,
    fixed_schedule,
    plan_elastic,
)
from omnitrain.trainer.parallel.layout import check_layout
from omnitrain.trainer.parallel.testing import run_on_ranks


def test_degree_is_the_smallest_that_keeps_the_per_rank_tokens():
    # ulysses=4, budget 1024: the fixed degree holds 256 tokens per rank.
    assert [degree_for(n, 4, 1024) for n in (1, 256, 257, 512, 513, 1024)] == [1, 1, 2, 2, 4, 4]
    assert [degree_for(n, 6, 600) for n in (100, 101, 200, 201, 300, 301)] == [1, 2, 2, 3, 3, 6]


def test_plan_places_micro_batches_on_aligned_sub_groups_and_balances_them():
    tokens = [1000, 200, 240, 500, 100, 260, 480, 90]
    s = plan_elastic(tokens, 4, 1024)
    assert s.degrees == (4, 1, 1, 2, 1, 2, 2, 1)
    for j, d in enumerate(s.degrees):
        assert s.first[j] % d == 0 and s.first[j] + d <= 4
    assert sorted(j for r in range(4) for j in s.items_of(r) if s.degrees[j] == 1) == [1, 2, 4, 7]
    assert [s.degrees[j] for j in s.order] == sorted(s.degrees, reverse=True)  # widest first
    loads = s.loads(tokens)
    assert max(loads) / (sum(loads) / 4) < 1.1
    assert sum(loads) == pytest.approx(sum(tokens))
    # Same micro-batches, fewer all-to-all bytes than the fixed degree; nothing at all when everything is short.
    fixed = fixed_schedule(len(tokens), 4)
    per_token = 2 * 4 * 64 * 2  # forward + backward, q/k/v + output, hidden 64, 2 blocks
    assert all_to_all_elements(tokens, fixed.degrees, 64, 2) == per_token * (2872 * 3 // 4)  # 90 padded to 92
    assert all_to_all_elements(tokens, s.degrees, 64, 2) == per_token * (1000 * 3 // 4 + (500 + 260 + 480) // 2)
    assert all_to_all_elements([10, 20], plan_elastic([10, 20], 4, 1024).degrees, 64, 2) == 0


def test_every_rank_runs_its_micro_batches_in_the_one_global_order():
    s = plan_elastic([300, 40, 700, 30, 20, 200, 90], 4, 800)
    position = {j: i for i, j in enumerate(s.order)}
    for r in range(4):
        mine = s.items_of(r)
        assert [position[j] for j in mine] == sorted(position[j] for j in mine)
    assert sorted(j for j in range(7) if any(j in s.items_of(r) for r in range(4))) == list(range(7))


def test_unsupported_layouts_are_refused_naming_the_field():
    dims = dict(num_heads=4, depth=4, mlp_hidden=64)
    with pytest.raises(ValueError, match="spec.parallelism.elasticUlysses: supported with pipeline=1"):
        check_layout(ParallelLayout(pp=2, ulysses=2, elastic_ulysses=True), 4, **dims)
    with pytest.raises(ValueError, match="spec.parallelism.elasticUlysses: needs ulysses >= 2"):
        check_layout(ParallelLayout(dp=2, elastic_ulysses=True), 2, **dims)
    with pytest.raises(ValueError, match="spec.parallelism.gradientReduce: .*dataSharding fsdp"):
        check_layout(ParallelLayout(dp=2, data_sharding="fsdp", grad_reduce="overlapped"), 2, **dims)
    spec = JobSpec.model_validate(
        {
            "parallelism": {
                "gpusPerNode": 4,
                "ulysses": 2,
                "tensor": 2,
                "elasticUlysses": True,
                "gradientReduce": "overlapped",
            }
        }
    )
    fields = [e.field for e in validate_job_spec(spec)]
    assert fields == ["spec.parallelism.elasticUlysses", "spec.parallelism.gradientReduce"]
    ok = ParallelismSpec.model_validate(
        {"gpusPerNode": 4, "ulysses": 4, "elasticUlysses": True, "gradientReduce": "overlapped"}
    )
    assert not validate_job_spec(JobSpec(parallelism=ok))


class _CountingLoader:
    """Stand-in for PackedLoader: step i yields [i]; the position is the number of steps made."""

    def __init__(self):
        self.made = 0
        self.last_step_tokens = 0
        self.last_step_counts = None

    def next_step(self):
        self.made += 1
        self.last_step_tokens = self.made
        return [self.made]

    def state_dict(self):
        return {"made": self.made}

    def load_state_dict(self, state):
        self.made = state["made"]


def test_prefetching_loader_yields_the_same_steps_and_resumes_where_training_was():
    prefetch = PrefetchingLoader(_CountingLoader(), make_schedule=lambda batches: ("plan", batches[0]))
    try:
        assert prefetch.next_step() == ([1], ("plan", 1))
        assert prefetch.next_step() == ([2], ("plan", 2))
        assert prefetch.last_step_tokens == 2
        saved = prefetch.state_dict()
        assert saved == {"made": 2}  # not 3: step 3 is only prepared
        assert prefetch.next_step()[0] == [3]
        prefetch.load_state_dict(saved)
        assert [prefetch.next_step()[0] for _ in range(2)] == [[3], [4]]
    finally:
        prefetch.close()


ELASTIC_LAYOUTS = {
    "ulysses4": dict(ulysses=4, micro_batches=6),
    "dp2-ulysses2": dict(dp=2, ulysses=2, micro_batches=3),
}


@pytest.mark.slow
@pytest.mark.timeout(420)  # generous: the shared 2-core machine is often loaded 5-10x
@pytest.mark.parametrize("name", list(ELASTIC_LAYOUTS))
def test_elastic_ulysses_trains_like_the_fixed_degree_and_one_process(name):
    """Packed micro-batches of 4-32 tokens: elastic degrees (1, 2, 4) with and without the overlapped all-reduce
    (small buckets, so several launch during backward) against the fixed degree, in the same processes."""
    base = ELASTIC_LAYOUTS[name]
    layouts = {
        "fixed": ParallelLayout(**base),
        "elastic": ParallelLayout(**base, elastic_ulysses=True),
        "elastic-overlapped": ParallelLayout(
            **base, elastic_ulysses=True, grad_reduce="overlapped", grad_bucket_mb=0.02
        ),
    }
    first = layouts["fixed"]
    want = reference(first.dp * first.micro_batches, "elastic")
    results = run_on_ranks(workers.train_layouts, first.world_size, layouts, 2, "elastic")
    degrees = {d for r in results for d in r["elastic"]["degrees"]}
    assert degrees == ({1, 2, 4} if first.ulysses == 4 else {1, 2})
    for mode in layouts:
        assert_runs_match([r[mode] for r in results], want)
    launched = [r["elastic-overlapped"]["buckets"] for r in results]  # (during backward, all) per rank
    assert all(total > 3 and early > 0 for early, total in launched), launched
    for r in results:
        assert r["elastic"]["losses"] == pytest.approx(r["fixed"]["losses"], rel=1e-5)
        assert_same_tensors(r["elastic"]["grads"], r["fixed"]["grads"], "elastic vs fixed gradient", atol=2e-6)


@pytest.mark.slow
@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
def test_overlapped_all_reduce_gives_the_coalesced_gradients_with_parameters_unused_on_some_ranks():
    """Stand-in model whose `embed.pair` only rank 1's micro-batch uses: that bucket launches on rank 1 during
    backward and on rank 0 only in finish(), in the same bucket order."""
    layouts = {
        "coalesced": ParallelLayout(dp=2, micro_batches=2),
        "overlapped": ParallelLayout(dp=2, micro_batches=2, grad_reduce="overlapped", grad_bucket_mb=0.02),
    }
    want = reference(4, "standin")
    assert "embed.pair.weight" in want["grads"]
    results = run_on_ranks(workers.train_layouts, 2, layouts, 2, "standin")
    for mode in layouts:
        assert_runs_match([r[mode] for r in results], want)
    launched = [r["overlapped"]["buckets"] for r in results]
    assert all(total > 3 and 0 < early < total for early, total in launched), launched
    for r in results:
        for name, g in r["coalesced"]["grads"].items():
            assert torch.equal(r["overlapped"]["grads"][name], g), name


@pytest.mark.slow
@pytest.mark.timeout(420)  # generous: the shared 2-core machine is often loaded 5-10x
def test_training_loop_with_elastic_ulysses_and_overlap_matches_the_fixed_degree(tmp_path):
    """omnitrain.trainer.train on 2 ranks (ulysses=2): the loader's elastic micro-batches (the step's samples re-cut
    at the granularity of the degrees, loss re-weighted per sample), prefetched, with the overlapped all-reduce
    inside the real loop give the fixed degree's run."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from train_helpers import config_dict

    def config(**parallelism):
        data = config_dict(tmp_path, steps=3)
        data["spec"]["data"]["tokenBudget"] = 128
        data["spec"]["parallelism"] = {"gpusPerNode": 2, "ulysses": 2, "microBatches": 4, **parallelism}
        return data

    fixed = run_on_ranks(workers.train_loop, 2, config())
    elastic = run_on_ranks(workers.train_loop, 2, config(elasticUlysses=True, gradientReduce="overlapped"))
    degrees = elastic[0]["degrees"]
    assert not fixed[0]["degrees"] and 1 in degrees, degrees  # short samples on one rank, elastic only
    for got in elastic:
        assert got["losses"] == pytest.approx(fixed[0]["losses"], rel=1e-5)
        assert_same_tensors(got["params"], fixed[0]["params"], "parameter", atol=5e-5)


@pytest.mark.parametrize("stage", ["pretrain", "dpo"])
def test_regrouped_micro_batches_keep_the_fixed_degrees_loss_and_gradients(tmp_path, stage):
    """One process: the loader's ElasticStep re-cuts a step's samples into other micro-batches; with RegroupedLoss
    the sum over them / their count equals the mean over the fixed micro-batches (flow matching and DPO pairs),
    and so do the gradients."""
    from omnitrain.model.config import PRESETS
    from omnitrain.model.mmdit import MMDiT
    from omnitrain.trainer.data.balance import CostModel
    from omnitrain.trainer.data.loader import PackedLoader
    from omnitrain.trainer.data.reader import ShardReader
    from omnitrain.trainer.data.synthetic import SynthSpec, write_synthetic
    from omnitrain.trainer.objectives import DiffusionDPOLoss, FlowMatchingLoss, dpo_inputs, flow_matching_inputs
    from omnitrain.trainer.parallel.elastic import RegroupedLoss

    cfg = PRESETS["tiny"]
    write_synthetic(
        tmp_path,
        SynthSpec(
            samples=48,
            shards=1,
            seed=4,
            max_frames=8,
            max_side=16,
            long_fraction=0.15,
            latent_channels=cfg.latent_channels,
            text_dim=cfg.text_dim,
        ),
        log=lambda *_: None,
    )
    pairs = stage == "dpo"
    loader = PackedLoader(
        ShardReader(tmp_path),
        cfg.patch_size,
        2048,
        CostModel.of(cfg),
        micro_batches=3,
        pairs=pairs,
        text_dim=cfg.text_dim,
        latent_channels=cfg.latent_channels,
        elastic_ulysses=4,
    )
    torch.manual_seed(0)
    model = MMDiT(cfg)
    base = DiffusionDPOLoss(MMDiT(cfg), beta=500.0) if pairs else FlowMatchingLoss()
    make_inputs = dpo_inputs if pairs else flow_matching_inputs
    step = loader.next_step()
    fixed_groups = {tuple(g for g, (j, _) in enumerate(step.where) if j == m) for m in range(len(step.fixed))}
    assert {b.samples for b in step.bins} != fixed_groups and min(b.degree for b in step.bins) < 4  # really re-cut

    def loss_and_grads(microbatches, loss_fn):
        model.zero_grad()
        loss = sum(loss_fn(model(*mb), mb) for mb in microbatches) / len(microbatches)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    rng = torch.Generator().manual_seed(11)
    noised = [make_inputs(b, rng) for b in step.fixed]
    want, want_grads = loss_and_grads(noised, base)
    got, got_grads = loss_and_grads([step.take(k, noised) for k in range(len(step.bins))], RegroupedLoss(base))
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert_same_tensors(got_grads, want_grads, "gradient", atol=1e-6)
