import logging
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omnitrain.model.config import PRESETS
from omnitrain.trainer.data.balance import (CostModel, assign_balanced, assign_round_robin, bin_costs, imbalance)
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
    return PackedLoader(ShardReader(folder, kw.pop("on_corrupt", "skip")), **{k: v for k, v in args.items()
                                                                               if k != "on_corrupt"})


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
        assert loader.last_step_tokens > 0.8 * 2 * 256      # the step is nearly full


def test_resume_yields_the_same_batches(dataset):
    first = _loader(dataset, dp_size=2, micro_batches=2)
    for _ in range(3):
        first.next_global_step()
    state = first.state_dict()
    assert state["carry"]                 # something is carried over, so carry-over is exercised
    expected = [_keys(first.next_global_step()) for _ in range(6)]   # crosses an epoch boundary
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
    tokens = [rng.choice([40] * 9 + [600]) for _ in range(256)]      # mostly short, a few long clips
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
    rows[2]["video"] = rows[2]["video"][:-4]          # bytes no longer match the shape
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
