"""The libraries the model card cites, as references for our parallel layer (docs/design-decisions.md, References):

- DeepSpeed's Ulysses (deepspeed.sequence.layer.DistributedAttention) and ours (UlyssesAttention) give the same
  attention output and the same gradients (q, k, v, the layer's input and its projection weights) on the same
  unpacked input, and both equal one process without sequence parallelism;
- megatron-core's parallel_state process groups and the groups setup_parallel builds from our layout are the same
  rank sets for the same degrees, once Megatron is given our rank order (its default order differs: shown below).

Both libraries run on CPU over gloo in the same processes as ours; each test skips when its library is absent
(the `test` extra of pyproject.toml installs both, pinned)."""

from __future__ import annotations

import importlib.util

import pytest
import reference_workers as workers
import torch

from omnitrain.trainer.parallel.testing import run_on_ranks

pytestmark = pytest.mark.slow


def needs(module: str, why: str) -> None:
    """Skip unless `module` is installed; found, not imported: the libraries run only in the spawned ranks, and
    importing them here would load them (DeepSpeed's accelerator probe, megatron-core's warnings) into the
    process that runs the rest of the suite."""
    top = module.partition(".")[0]  # find_spec of a submodule raises when its package is absent
    if importlib.util.find_spec(top) is None or importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; it is the {why} reference (pip install -e '.[test]')")


@pytest.mark.timeout(300)  # generous: the shared 2-core machine is often loaded 5-10x
def test_deepspeed_ulysses_and_ours_give_the_same_outputs_and_gradients():
    needs("deepspeed", "Ulysses")
    want = workers.single_process_reference()
    ranks = run_on_ranks(workers.ulysses_both, 4, (2, 4))  # degree 2 (two groups of 2) and degree 4
    for rank, results in enumerate(ranks):
        assert sorted(results) == sorted(
            (d, who) for d in (2, 4) for who in ("deepspeed-b0", "deepspeed-b1", "omnitrain")
        )
        for degree in (2, 4):
            ours = results[degree, "omnitrain"]
            assert sorted(ours) == sorted(want)
            for name in want:
                where = f"rank {rank}, ulysses={degree}: {name}"
                # float64 throughout: the libraries differ only in how tokens travel, so they agree to rounding.
                for layout in ("deepspeed-b0", "deepspeed-b1"):  # DeepSpeed's batch-first and sequence-first input
                    torch.testing.assert_close(ours[name], results[degree, layout][name], msg=f"{where} vs {layout}")
                torch.testing.assert_close(ours[name], want[name], msg=f"{where} vs one process")


# Megatron's rank order is a string, innermost (fastest-varying) first; its default:
MEGATRON_DEFAULT = "tp-cp-ep-dp-pp"
# Ours (omnitrain/trainer/parallel/layout.py): tp, then ulysses, then pp, then dp outermost. Written as a Megatron
# order (context parallel in Ulysses' place, expert parallel of size 1 anywhere) it is:
OURS_AS_MEGATRON = "tp-cp-ep-pp-dp"
# (tp, pp, cp) per world size; dp = world / (tp * pp * cp). The two orders differ exactly where pp > 1 and dp > 1.
DEGREES = {
    4: [(2, 2, 1), (1, 2, 1), (1, 1, 2)],
    8: [(2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2)],
}


def groups_in_order(rank: int, sizes: dict[str, int], order: str) -> dict[str, list[int]]:
    """The rank sets a rank order implies: ranks numbered in mixed radix over `order` (innermost first); a group
    of a dimension holds the ranks that differ from `rank` only in that dimension (only in data and context for
    the data x context group)."""
    dims = [d for d in order.split("-") if d != "ep"]
    world = 1
    for d in dims:
        world *= sizes[d]

    def coords(r: int) -> dict[str, int]:
        out = {}
        for d in dims:
            r, out[d] = divmod(r, sizes[d])
        return out

    mine = coords(rank)

    def group(varying: set[str]) -> list[int]:
        return [r for r in range(world) if all(c == mine[d] for d, c in coords(r).items() if d not in varying)]

    return {
        "tensor": group({"tp"}),
        "pipeline": group({"pp"}),
        "data": group({"dp"}),
        "context": group({"cp"}),
        "data x context": group({"dp", "cp"}),
    }


@pytest.mark.timeout(600)  # two spawns of 4 and 8 ranks, each importing megatron-core, on a loaded 2-core machine
@pytest.mark.parametrize("world", sorted(DEGREES))
def test_megatron_core_process_groups_and_ours_are_the_same_rank_sets(world):
    """Megatron's context parallel (context_parallel_size) splits every layer's sequence over a group, as our
    Ulysses degree does; its cp_comm_type="a2a" is Ulysses' all-to-all (its default "p2p" is ring attention over
    the same group). So cp maps to ulysses: the context group is our Ulysses group, and Megatron's data-parallel
    group with_context_parallel=True (where its gradients are reduced) is our data x ulysses gradient group.
    Megatron's "sequence parallel" is a tensor-parallel option (activations split inside the TP group), no group
    of its own; expert parallel has no counterpart in our dense DiT (size 1). Its model-parallel and embedding
    groups have no counterpart and are not compared.

    Orders: Megatron's default "tp-cp-ep-dp-pp" puts data inside pipeline (pipeline outermost); ours puts pipeline
    inside data. Tensor and context groups are the same in both; the pipeline and data groups are the same when
    pp == 1 or dp == 1 and differ otherwise, exactly as the two order strings say. Megatron given
    order="tp-cp-ep-pp-dp" builds our groups, except that it refuses that order when cp > 1 and pp > 1 (it asserts
    that its expert groups' data degree equal the attention layers'), so those degrees are compared under its
    default only."""
    needs("megatron.core", "process-group")
    runs = [(d, MEGATRON_DEFAULT) for d in DEGREES[world]]
    runs += [(d, OURS_AS_MEGATRON) for d in DEGREES[world] if d[1] == 1 or d[2] == 1]
    ranks = run_on_ranks(workers.megatron_and_ours, world, runs)
    some_differ = False
    for rank, got in enumerate(ranks):
        for (tp, pp, cp), order in runs:
            sizes = {"tp": tp, "pp": pp, "cp": cp, "dp": world // (tp * pp * cp)}
            where = f"rank {rank}, tp={tp} pp={pp} cp/ulysses={cp} dp={sizes['dp']}"
            megatron, ours = got[(tp, pp, cp), order], got[(tp, pp, cp), "omnitrain"]
            # Each side is the order it documents.
            assert megatron == groups_in_order(rank, sizes, order), f"{where}: Megatron under {order}"
            assert ours == groups_in_order(rank, sizes, OURS_AS_MEGATRON), f"{where}: ours"
            if order == OURS_AS_MEGATRON:
                assert megatron == ours, where
                continue
            assert megatron["tensor"] == ours["tensor"] and megatron["context"] == ours["context"], where
            same = pp == 1 or sizes["dp"] == 1
            for kind in ("pipeline", "data", "data x context"):
                assert (megatron[kind] == ours[kind]) == same, f"{where}: {kind} {megatron[kind]} vs {ours[kind]}"
            some_differ |= not same
    assert some_differ  # the degrees include the case where the orders part
