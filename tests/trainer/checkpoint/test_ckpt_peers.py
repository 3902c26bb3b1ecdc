"""Peer replicas of node-local checkpoints: the pure plans (who copies to whom, which source serves each rank's
restore) and gloo ranks on two simulated nodes whose restore reads a peer's copy when its own disk was wiped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ckpt_workers import tiny_train

from omnitrain.checkpoint_paths import MANIFEST_NAME, shard_file_name, step_dir
from omnitrain.spec import CheckpointSpec, peer_replica_problems
from omnitrain.trainer.checkpoint import CheckpointConfig
from omnitrain.trainer.checkpoint.peers import (
    Holding,
    PeerCopy,
    ShardSource,
    peer_copies,
    peer_nodes,
    peer_step_dir,
    peer_step_dirs,
    plan_sources,
    slowest_source,
)
from omnitrain.trainer.parallel.testing import run_on_ranks

# ---- which node keeps which node's copy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domains", "expected"),
    [
        ([], []),
        (["a"], [None]),  # one node: nobody to copy to
        (["", ""], [1, 0]),
        (["", "", "", ""], [1, 2, 3, 0]),  # no topology known: node_rank + 1 mod nnodes
        (["r1", "r1", "r2", "r2"], [2, 2, 0, 0]),  # the next node in another rack
        (["z1", "z2", "z1", "z2"], [1, 2, 3, 0]),  # the next node is already in another zone
        (["r1", "r1", "r1"], [1, 2, 0]),  # one domain: the next node after all
    ],
)
def test_peer_nodes(domains, expected):
    assert peer_nodes(domains) == expected


def test_peer_copies_pair_ranks_by_their_position_on_the_node():
    nodes = ["a", "a", "b", "b", "c", "c"]
    assert peer_copies(nodes, [""] * 6) == [
        PeerCopy(0, 2, 0),
        PeerCopy(1, 3, 0),
        PeerCopy(2, 4, 1),
        PeerCopy(3, 5, 1),
        PeerCopy(4, 0, 2),
        PeerCopy(5, 1, 2),
    ]
    # a peer node with fewer ranks: positions wrap
    assert peer_copies(["a", "a", "b"], [""] * 3) == [PeerCopy(0, 2, 0), PeerCopy(1, 2, 0), PeerCopy(2, 0, 1)]
    assert peer_copies(["a", "a"], ["", ""]) == []  # one node


# ---- which source serves each rank's restore --------------------------------------------------------------------

LOCAL = Holding(local=True, persistent=True)
ONLY_PERSISTENT = Holding(local=False, persistent=True)
NOTHING = Holding(local=False, persistent=False)


def holds(*ranks: int, local: bool = True, persistent: bool = True) -> Holding:
    return Holding(local=local, persistent=persistent, peer=frozenset(ranks))


@pytest.mark.parametrize(
    ("needs", "holdings", "expected"),
    [
        # every node kept its disk: all local
        ([0, 1], [LOCAL, LOCAL], [("local", 0), ("local", 1)]),
        # rank 1 moved to a fresh node; node 0 kept its peer copy: rank 0 sends it
        ([0, 1], [holds(1), ONLY_PERSISTENT], [("local", 0), ("peer", 0)]),
        # no peer copy anywhere: the persistent tier
        ([0, 1], [LOCAL, ONLY_PERSISTENT], [("local", 0), ("persistent", 1)]),
        # no peer copy and no persistent tier: this step cannot be restored by every rank
        ([0, 1], [LOCAL, NOTHING], None),
        # a peer copy serves even without a persistent tier
        ([0, 1], [holds(1, persistent=False), Holding(local=False, persistent=False)], [("local", 0), ("peer", 0)]),
        # the rank moved onto the node that kept its copy: read from its own disk, nothing sent
        ([0, 1], [LOCAL, holds(1, local=False)], [("local", 0), ("peer", 1)]),
        # two ranks of a node hold the same peer copies (same disk): the senders take turns
        (
            [0, 1, 2, 3],
            [holds(2, 3), holds(2, 3), ONLY_PERSISTENT, ONLY_PERSISTENT],
            [("local", 0), ("local", 1), ("peer", 0), ("peer", 1)],
        ),
        # after a data-degree change two ranks need the same saved shard
        ([0, 1, 1], [holds(1), ONLY_PERSISTENT, ONLY_PERSISTENT], [("local", 0), ("peer", 0), ("peer", 0)]),
        # the local copy wins over a peer copy on the own disk
        ([0, 1], [holds(0), LOCAL], [("local", 0), ("local", 1)]),
    ],
)
def test_plan_sources(needs, holdings, expected):
    plan = plan_sources(needs, holdings)
    assert plan == (None if expected is None else [ShardSource(t, h) for t, h in expected])


def test_slowest_source():
    assert slowest_source(["local", "peer", "local"]) == "peer"
    assert slowest_source(["peer", "persistent"]) == "persistent"
    assert slowest_source(["local"]) == "local"


def test_peer_replicas_need_async_saves():
    assert CheckpointSpec().peer_replicas == 0
    problems = peer_replica_problems(CheckpointSpec.model_validate({"peerReplicas": 1, "async": False}))
    assert [p.field for p in problems] == ["spec.checkpoint.peerReplicas"]
    assert "async: true" in problems[0].message
    assert peer_replica_problems(CheckpointSpec.model_validate({"peerReplicas": 1})) == []
    with pytest.raises(ValueError, match="async"):
        CheckpointConfig(job="j", local_root="/x", peer_replicas=1, async_save=False)
    with pytest.raises(ValueError, match="peerReplicas"):
        CheckpointConfig(job="j", local_root="/x", peer_replicas=2)


# ---- two simulated nodes (one gloo rank each) -----------------------------------------------------------------

JOB = "peer-job"


def _ckpt(tmp_path: Path, peer_replicas: int, **kw) -> dict:
    return {
        "job": JOB,
        "local_root": str(tmp_path / "nodes" / "node{rank}" / "nvme"),
        "persistent_root": str(tmp_path / "pv"),
        "interval": 1,
        "keep": 2,
        "peer_replicas": peer_replicas,
        **kw,
    }


def _local(tmp_path: Path, node: int) -> Path:
    return tmp_path / "nodes" / f"node{node}" / "nvme"


def _assert_same_state(a: dict, b: dict) -> None:
    import torch

    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["optimizer"]:
        for n in a["optimizer"][k]:
            assert torch.equal(a["optimizer"][k][n], b["optimizer"][k][n]), (k, n)


@pytest.mark.parametrize("persistent", [True, False], ids=["with-persistent", "local-only"])
def test_moved_rank_restores_from_its_peers_copy(tmp_path, persistent):
    ckpt = _ckpt(tmp_path, 1, **({} if persistent else {"persistent_root": None}))
    before = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})

    # each node holds the other's shards of the newest `keep` steps, beside its own, with the manifest
    for node, other in ((0, 1), (1, 0)):
        held = peer_step_dirs(_local(tmp_path, node), JOB)
        assert sorted(held) == [4, 5]  # retention applies to peer copies too
        copy = peer_step_dir(_local(tmp_path, node), JOB, other, 5)
        assert held[5] == [copy]
        assert sorted(p.name for p in copy.iterdir()) == [MANIFEST_NAME, shard_file_name(other)]
        own = step_dir(_local(tmp_path, other), JOB, 5) / shard_file_name(other)
        assert (copy / shard_file_name(other)).read_bytes() == own.read_bytes()

    # rank 1 moves to a fresh node: its disk is empty
    shutil.rmtree(_local(tmp_path, 1))
    again = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    assert [r["restored_tier"] for r in again] == ["local", "peer"]
    assert again[0]["restored_sources"] == ["local", "peer"]
    for r in range(2):
        assert again[r]["start"] == 5
        _assert_same_state(again[r]["at_restore"], before[r]["final"])  # bitwise what was saved at step 5


def test_without_peer_replicas_the_moved_rank_reads_the_persistent_tier(tmp_path):
    ckpt = _ckpt(tmp_path, 0)
    before = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    assert peer_step_dirs(_local(tmp_path, 0), JOB) == {}
    shutil.rmtree(_local(tmp_path, 1))
    again = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    assert [r["restored_tier"] for r in again] == ["local", "persistent"]
    for r in range(2):
        assert again[r]["start"] == 5
        _assert_same_state(again[r]["at_restore"], before[r]["final"])


def test_a_corrupt_peer_copy_falls_back_to_the_persistent_tier(tmp_path):
    ckpt = _ckpt(tmp_path, 1)
    before = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    shutil.rmtree(_local(tmp_path, 1))
    shard = peer_step_dir(_local(tmp_path, 0), JOB, 1, 5) / shard_file_name(1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    again = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    assert [r["restored_tier"] for r in again] == ["local", "persistent"]
    assert again[1]["start"] == 5
    _assert_same_state(again[1]["at_restore"], before[1]["final"])


def test_the_restore_event_in_the_metrics_log_names_the_source(tmp_path):
    from omnitrain.metrics_log import read_job_log
    from omnitrain.observability.callback import MetricsCallback

    cb = MetricsCallback(
        job="demo", attempt=1, total_steps=4, world_size=2, rank=0, local_rank=0, metrics_port=None, log_dir=tmp_path
    )
    cb.on_restore(step=4, seconds=1.5, source="peer", sources=["local", "peer"])
    cb.on_train_start(step=4)
    cb.on_train_end(step=4, reason="Completed")
    restores = [r for r in read_job_log(tmp_path).records if r["kind"] == "restore"]
    assert [(r["step"], r["source"], r["sources"]) for r in restores] == [(4, "peer", ["local", "peer"])]


def test_a_peer_copy_the_receiving_disk_refuses_does_not_fail_the_save(tmp_path):
    from omnitrain.trainer.checkpoint.peers import peers_root

    ckpt = _ckpt(tmp_path, 1)
    blocked = peers_root(_local(tmp_path, 0), JOB)
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")  # node 0 cannot create its peers folder: every copy it receives fails
    before = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    assert [r["last_complete_step"] for r in before] == [5, 5]  # the saves completed
    assert sorted(peer_step_dirs(_local(tmp_path, 1), JOB)) == [4, 5]  # the other direction still works
    shutil.rmtree(_local(tmp_path, 1))
    again = run_on_ranks(tiny_train, 2, {"total_steps": 5, "checkpoint": ckpt})
    assert [r["restored_tier"] for r in again] == ["local", "persistent"]
    _assert_same_state(again[1]["at_restore"], before[1]["final"])
