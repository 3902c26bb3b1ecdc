"""The kwok benchmarks' judgements without a cluster: when a gang counts as recovered, what counts as a node flap
and a Lease gap, and the table the recovery bench prints."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))  # appended: bench/ has modules named like common ones

import recovery_scale  # noqa: E402
from kwokbench import NodeHealth  # noqa: E402
from recovery_scale import Before, PodView, in_place_recovered, recreated  # noqa: E402

from omnitrain.gang import GangAnnouncement  # noqa: E402


def _pod(rank: int, attempt: int, phase: str = "Running", terminating: bool = False) -> PodView:
    return PodView(f"rec-a{attempt}-n{rank}", f"u{attempt}-{rank}", phase, attempt, terminating)


def test_recreate_is_recovered_only_when_every_pod_of_a_newer_attempt_runs():
    before = Before(nodes=3, attempt=0, uids=frozenset({"u0-0", "u0-1", "u0-2"}), victim_uid="u0-1")
    old = [_pod(0, 0), _pod(2, 0)]
    assert not recreated(old, before), "the old attempt's survivors are not a recovered gang"
    assert not recreated([_pod(r, 1) for r in range(2)] + old, before), "two of three ranks of the new attempt"
    assert not recreated([_pod(0, 1), _pod(1, 1), _pod(2, 1, phase="Pending")], before)
    assert not recreated([_pod(0, 1), _pod(1, 1), _pod(2, 1, terminating=True)], before)
    assert recreated([_pod(r, 1) for r in range(3)] + [_pod(0, 0, terminating=True)], before)


def _announced(generation: int, members: tuple[str, ...]) -> GangAnnouncement:
    return GangAnnouncement(generation, {m: r for r, m in enumerate(members)}, members[0], 29500, len(members))


def test_in_place_is_recovered_once_a_newer_generation_names_only_running_pods():
    before = Before(nodes=3, attempt=4, uids=frozenset({"u0-0", "u0-1", "u0-2"}), victim_uid="u0-1")
    spare = PodView("rec-spare-0", "us", "Running", 0, False)
    pods = [_pod(0, 0), _pod(2, 0), spare]
    members = ("rec-a0-n0", "rec-spare-0", "rec-a0-n2")
    old_members = ("rec-a0-n0", "rec-a0-n1", "rec-a0-n2")
    assert not in_place_recovered(pods, before, None), "nothing announced yet"
    assert not in_place_recovered(pods, before, _announced(4, members)), "the fault's own generation"
    # the spare named a member: no pod changed, and the gang is recovered
    assert in_place_recovered(pods, before, _announced(5, members))
    assert not in_place_recovered(pods, before, _announced(5, old_members)), "n1 is gone"
    replacement = PodView("rec-a0-n1", "u-new", "Pending", 0, False)
    assert not in_place_recovered([*pods, replacement], before, _announced(5, old_members))


def test_start_up_is_not_a_flap_but_unknown_and_back_are_two_transitions():
    health = NodeHealth()  # its bookkeeping; no watches started
    health.saw_ready("gpu-0", "Unknown")  # just created, not Ready yet
    health.saw_ready("gpu-0", "True")
    health.saw_ready("gpu-0", "True")
    assert health.transitions == []
    health.saw_ready("gpu-0", "Unknown")
    assert health.not_ready_now() == ["gpu-0"]
    health.saw_ready("gpu-0", "True")
    assert [(node, status) for _, node, status in health.transitions] == [("gpu-0", "Unknown"), ("gpu-0", "True")]
    assert "2 (1 nodes)" in health.summary()


def test_the_longest_lease_gap_is_between_renewals_of_one_lease():
    health = NodeHealth()  # its bookkeeping; no watches started
    for lease, at in (("a", 100.0), ("b", 101.0), ("a", 110.0), ("b", 131.0), ("a", 120.0), ("a", 120.0)):
        health.saw_renewal(lease, at)
    assert (health.longest_gap_s, health.longest_gap_node) == (30.0, "b")
    assert "30.0 s (b) over 3 renewals of 2 leases" in health.summary()
    assert "no renewal of the 0 leases seen yet" in NodeHealth().summary()


def test_the_table_shows_medians_per_size_and_mode_and_the_size_ratio():
    rows = [
        {"nodes": n, "mode": "Recreate", "repeat": i, "recovery_s": t, "calls": c, "deleted": n, "created": n}
        | {"flaps": 0}
        for n, i, t, c in ((64, 0, 2.0, 130), (64, 1, 1.0, 128), (64, 2, 3.0, 140), (512, 0, 16.0, 1060))
    ]
    text = recovery_scale.table(rows)
    assert "| 64 | Recreate | 2.00 | 1.00-3.00 | 130 | 64 / 64 | 0 |" in text
    assert "| 512 | Recreate | 16.00 | 16.00-16.00 | 1060 | 512 / 512 | 0 |" in text
    assert recovery_scale.size_ratios(rows) == ["Recreate: 512-node / 64-node recovery time = 8.00"]


def test_a_runs_printed_lines_give_back_its_rows():
    text = (
        "nodes=  64 mode=InPlace #0: whole gang Running again   0.29 s (last old pod gone 0.04 s, last new pod "
        "created 0.24 s), operator API calls 23, pods deleted 1 / created 1, node flaps 0\n"
        "nodes=1024 mode=Recreate #2: whole gang Running again  31.50 s (last old pod gone 9.00 s, last new pod "
        "created 30.00 s), operator API calls 2100, pods deleted 1024 / created 1024, node flaps 0\n"
    )
    rows = recovery_scale.rows_from_log(text)
    assert [(r["nodes"], r["mode"], r["recovery_s"], r["calls"], r["created"]) for r in rows] == [
        (64, "InPlace", 0.29, 23, 1),
        (1024, "Recreate", 31.5, 2100, 1024),
    ]
    assert set(recovery_scale.MODES) == {"Recreate", "InPlace", "InPlaceSpare"}
