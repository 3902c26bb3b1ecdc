import logging
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omnitrain.model.config import PRESETS
from omnitrain.trainer.data.balance import (
    CostModel,
    assign_balanced,
    assign_elastic,
    assign_round_robin,
    bin_costs,
    imbalance,
    rank_loads,
)
from omnitrain.trainer.data.loader import PackedLoader
from omnitrain.trainer.data.reader import DataError, ShardReader, list_shards
from omnitrain.trainer.data.schema import SCHEMA, decode, encode
from omnitrain.trainer.data.synthetic import SynthSpec, write_synthetic

CFG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SynthSpec(samples=96, shards=3, seed=7, row_group_size=8), log=lambda *_: None)
    return out


def _loader(folder, **kw):
    args = dict(patch_size=CFG.patch_size, token_budget=256, cost=CostModel.of(CFG))
    args.update(kw)
    return PackedLoader(
        ShardReader(folder, kw.pop("on_corrupt", "skip")), **{k: v for k, v in args.items() if k != "on_corrupt"}
    )


def _keys(step_bins):
    return [[s.key for s in b] for b in step_bins]


def test_synthetic_dataset_is_shuffled_varied_and_readable(dataset):
    assert len(list_shards(dataset)) == 3
    rows = [s for _, (_, s) in zip(range(96), ShardReader(dataset))]
    keys = [s.key for s in rows]
    assert sorted(keys) == list(range(96)) and keys != sorted(keys)
    assert {s.task for s in rows} == {"t2v", "i2v", "v2v"}
    assert len({tuple(s.video.shape) for s in rows}) > 5
    for s in rows:
        if s.task == "i2v":
            assert torch.equal(s.reference, s.video[:, :1])
    again = decode(encode(rows[0]))
    assert torch.equal(again.video, rows[0].video) and torch.equal(again.text, rows[0].text)


def test_packing_respects_budget_and_boundaries(dataset):
    loader = _loader(dataset, micro_batches=2)
    for _ in range(5):
        for batch in loader.next_step():
            assert batch.num_tokens <= 256
            assert int(batch.cu_seqlens[-1]) == batch.num_tokens
        assert loader.last_step_tokens > 0.8 * 2 * 256  # the step is nearly full


def test_resume_yields_the_same_batches(dataset):
    first = _loader(dataset, dp_size=2, micro_batches=2)
    for _ in range(3):
        first.next_global_step()
    state = first.state_dict()
    assert state["carry"]  # something is carried over, so carry-over is exercised
    expected = [_keys(first.next_global_step()) for _ in range(6)]  # crosses an epoch boundary
    second = _loader(dataset, dp_size=2, micro_batches=2)
    second.load_state_dict(state)
    assert [_keys(second.next_global_step()) for _ in range(6)] == expected
    assert first.reader.epoch >= 1


def test_ranks_split_one_step(dataset):
    bins = _loader(dataset, dp_size=2, micro_batches=1).next_global_step()
    r0 = _loader(dataset, dp_rank=0, dp_size=2).next_step()
    r1 = _loader(dataset, dp_rank=1, dp_size=2).next_step()
    assert r0[0].num_samples == len(bins[0]) and r1[0].num_samples == len(bins[1])


def test_balancer_beats_round_robin_on_skewed_lengths():
    rng = random.Random(0)
    tokens = [rng.choice([40] * 9 + [600]) for _ in range(256)]  # mostly short, a few long clips
    cost = CostModel.of(CFG)
    costs = [cost(n) for n in tokens]
    bins = 8
    balanced = bin_costs(assign_balanced(costs, tokens, bins, capacity=10**9), costs, bins)
    round_robin = bin_costs(assign_round_robin(len(tokens), bins), costs, bins)
    assert imbalance(balanced) < imbalance(round_robin)
    assert imbalance(balanced) < 1.05
    assert cost.quadratic > 0 and cost(600) > 15 * cost(40)


def test_dpo_pairs_pack_winner_and_loser(dataset):
    batch = _loader(dataset, pairs=True).next_step()[0]
    assert batch.num_samples % 2 == 0
    assert batch.seqlens[0::2] == batch.seqlens[1::2]


def _copy_shards(src, dst, n=2):
    dst.mkdir()
    for path in list_shards(src)[:n]:
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_truncated_shard_skipped_or_named(dataset, tmp_path, caplog):
    folder = _copy_shards(dataset, tmp_path / "d")
    bad = list_shards(folder)[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        reader = ShardReader(folder, "skip")
        rows = [s for _, (_, s) in zip(range(32), reader)]
    assert len(rows) == 32 and reader.corrupt.shards == 1
    assert any(bad.name in r.message for r in caplog.records)
    with pytest.raises(DataError, match=bad.name):
        next(ShardReader(folder, "fail"))


def test_bad_row_skipped_or_named(dataset, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rows = pq.read_table(list_shards(dataset)[0]).to_pylist()[:6]
    rows[2]["video"] = rows[2]["video"][:-4]  # bytes no longer match the shape
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / "shard-00000.parquet")
    reader = ShardReader(folder, "skip")
    got = [s.key for _, (_, s) in zip(range(5), reader)]
    assert got == [r["key"] for i, r in enumerate(rows) if i != 2] and reader.corrupt.rows == 1
    failing = ShardReader(folder, "fail")
    with pytest.raises(DataError, match="shard-00000.parquet row 2"):
        [next(failing) for _ in range(5)]


def test_empty_folder_and_oversized_sample_are_clear_errors(dataset, tmp_path):
    with pytest.raises(DataError, match="spec.data.path"):
        ShardReader(tmp_path)
    loader = _loader(dataset, token_budget=40)
    with pytest.raises(DataError, match="tokenBudget"):
        for _ in range(50):
            loader.next_step()


def _check_elastic_bins(bins, tokens, ulysses, budget):
    assert sorted(i for b in bins for i in b.samples) == list(range(len(tokens)))  # every sample exactly once
    for b in bins:
        assert ulysses % b.degree == 0 and b.first % b.degree == 0 and b.first + b.degree <= ulysses
        assert sum(tokens[i] for i in b.samples) * ulysses <= budget * b.degree  # the fixed degree's tokens per rank


def test_elastic_packing_of_mostly_short_clips_is_degree_one_and_balanced():
    rng = random.Random(5)
    cost = CostModel.of(CFG)
    for ulysses in (2, 4):
        budget = 4096
        tokens = [rng.randint(40, 500) for _ in range(60)] + [rng.randint(budget // 2 + 1, budget) for _ in range(3)]
        rng.shuffle(tokens)
        costs = [cost(n) for n in tokens]
        bins = assign_elastic(tokens, costs, ulysses, budget)
        _check_elastic_bins(bins, tokens, ulysses, budget)
        degrees = [b.degree for b in bins]
        assert degrees.count(1) >= 0.7 * len(bins), degrees
        assert [sum(tokens[i] for i in b.samples) > budget // 2 for b in bins if b.degree == ulysses].count(True) == 3
        assert imbalance(rank_loads(bins, costs, ulysses)) < 1.05
        # the same micro-batches at the fixed degree would leave every rank 1/u of each: balanced, but all-to-all
        assert sum(rank_loads(bins, costs, ulysses)) == pytest.approx(sum(costs))


def test_elastic_packing_widens_short_samples_rather_than_idle_ranks():
    cost = CostModel.of(CFG)
    tokens = [200, 180]  # two short samples, four ranks: degree 1 would idle two of them
    bins = assign_elastic(tokens, [cost(n) for n in tokens], 4, 1024)
    _check_elastic_bins(bins, tokens, 4, 1024)
    assert imbalance(rank_loads(bins, [cost(n) for n in tokens], 4)) < 1.2
    assert sorted(b.degree for b in bins) == [2, 2]
    many = [100] * 8  # enough short ones: each stays on one rank
    bins = assign_elastic(many, [cost(n) for n in many], 4, 1024)
    assert {b.degree for b in bins} == {1} and imbalance(rank_loads(bins, [cost(n) for n in many], 4)) == 1.0


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    write_synthetic(
        out, SynthSpec(samples=96, shards=2, seed=3, max_frames=8, max_side=16, long_fraction=0.1), log=lambda *_: None
    )
    return out


def test_elastic_loader_keeps_the_steps_samples_and_position_and_recuts_them(mixed_dataset):
    kw = dict(token_budget=2560, micro_batches=3, dp_size=2)
    for rank in (0, 1):
        fixed, elastic = (
            _loader(mixed_dataset, dp_rank=rank, **kw),
            _loader(mixed_dataset, dp_rank=rank, elastic_ulysses=4, **kw),
        )
        ones = total = 0
        for _ in range(4):
            want, step = fixed.next_step(), elastic.next_step()
            assert [b.num_tokens for b in step.fixed] == [b.num_tokens for b in want]
            for a, b in zip(step.fixed, want):
                assert torch.equal(a.video, b.video) and torch.equal(a.cu_seqlens, b.cu_seqlens)
            assert elastic.state_dict() == fixed.state_dict()
            assert sum(step.bin_tokens(k) for k in range(len(step.bins))) == sum(b.num_tokens for b in want)
            _check_elastic_bins(step.bins, step.tokens, 4, 2560)
            assert imbalance(rank_loads(step.bins, step.costs, 4)) < 1.1
            ones += sum(b.degree == 1 for b in step.bins)
            total += len(step.bins)
        assert ones >= 0.6 * total
    saved = elastic.state_dict()
    after = [elastic.next_step().where for _ in range(2)]
    again = _loader(mixed_dataset, dp_rank=1, elastic_ulysses=4, **kw)
    again.load_state_dict(saved)
    assert [again.next_step().where for _ in range(2)] == after


def test_take_samples_rebuilds_micro_batches_sample_by_sample(mixed_dataset):
    from omnitrain.model.packing import pack
    from omnitrain.trainer.data.loader import records_of, take_samples

    rows = [s for _, (_, s) in zip(range(6), ShardReader(mixed_dataset))]
    a = pack([r for s in rows[:3] for r in records_of(s, False)], CFG.patch_size)
    b = pack([r for s in rows[3:] for r in records_of(s, False)], CFG.patch_size)
    got = take_samples([a, b], [(1, 2), (0, 0), (1, 0)])
    want = pack([r for s in (rows[5], rows[0], rows[3]) for r in records_of(s, False)], CFG.patch_size)
    for name in ("text", "reference", "context", "video", "kind", "sample_id", "positions", "cu_seqlens"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.video_grids == want.video_grids
