"""Fault injection through the whole recovery chain on the local cluster, with the real training loop: the operator
launches a job whose pods run its default command (`omnitrain watchdog -- torchrun ... -m omnitrain train`, 2 ranks,
gloo); after the first complete checkpoint we SIGSTOP one rank (hang), SIGKILL one rank, or delete the node a pod
runs on. The watchdog or torchrun ends the pod, or the operator sees the node gone; the operator classifies the
failure (omnitrain.resilience.decide) and gang-restarts; the next attempt resumes from the
newest complete checkpoint and the job Succeeds with a final checkpoint bitwise equal to an uninterrupted run's.

One uninterrupted torchrun run serves all three (module fixture, started with the first test and overlapping the
jobs): the trainer's result depends on the world size (2) and the config, not on how ranks are spread over pods,
once every rank computes with one thread (OMNITRAIN_POD_ENV=OMP_NUM_THREADS=1: torchrun sets it only for more than
one process per node, and CPU kernels sum in a different order with more threads).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from omnitrain.devcluster.procs import end_child

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition, deadline: float, what: str, interval: float = 0.2):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # polling with a deadline
    raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def trainer_operator(local_cluster, local_cluster_crd, tmp_path_factory):
    """(cluster, api, namespace, log): the operator with its default pod command (the watchdog in front of
    torchrun ... omnitrain train), one namespace for this module. Resync every 30 s: each fault here must be acted on
    from a watch event (pod ended, pod deleted, node deleted), not from the timer."""
    from kubernetes import client

    api = local_cluster_crd
    namespace = f"resilience-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    wait_until(lambda: _has_default_sa(api, namespace), 60, "default service account")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.kubeconfig),
        "OMNITRAIN_RESYNC_SECONDS": "30",
        "OMNITRAIN_NAMESPACES": namespace,
        "OMP_NUM_THREADS": "1",
        "OMNITRAIN_POD_ENV": "OMP_NUM_THREADS=1",
    }
    env.pop("OMNITRAIN_TRAIN_COMMAND", None)

    def start() -> subprocess.Popen:
        with open(log, "a") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "omnitrain", "operator"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    procs = [start()]

    def restart() -> None:
        """The operator stopped (SIGTERM, as a rollout does) and started again, on the same log."""
        end_child(procs[-1])
        procs.append(start())

    handle = OperatorHandle((local_cluster, api, namespace, log))
    handle.restart = restart
    try:
        yield handle
    finally:
        end_child(procs[-1])


class OperatorHandle(tuple):
    """(cluster, api, namespace, log), and .restart() for the tests that restart the operator."""

    restart: Callable[[], None]


def _has_default_sa(api, namespace: str) -> bool:
    from kubernetes import client

    return any(
        sa.metadata.name == "default" for sa in client.CoreV1Api(api).list_namespaced_service_account(namespace).items
    )


def job_status(api, namespace: str, name: str) -> dict:
    from kubernetes import client

    from omnitrain.operator import crd

    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)
    return obj.get("status") or {}


def find_rank_pid(job: str, attempt: int, rank: int) -> int | None:
    """The training process of one rank, found by the env the operator and torchrun give it."""
    from omnitrain.devcluster.procs import find_pid_by_env

    return find_pid_by_env(
        {"OMNITRAIN_JOB_NAME": job, "OMNITRAIN_ATTEMPT": str(attempt), "RANK": str(rank)}, ("OMNITRAIN_HEARTBEAT_DIR",)
    )


def pod_logs(cluster, api, namespace: str, job: str) -> str:
    from kubernetes import client

    out = []
    for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
        if pod.metadata.name.startswith(job):
            path = cluster.container_log(namespace, pod.metadata.name, "trainer")
            out.append(f"--- {pod.metadata.name}\n" + (path.read_text()[-2500:] if path.exists() else "(no log)"))
    return "\n".join(out)


def tensors(state, prefix: str = "") -> dict:
    import torch

    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in tensors(value, f"{prefix}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in tensors(value, f"{prefix}/{i}").items()}
    return {}


TRAIN_STEPS, TRAIN_INTERVAL = 12, 4
# Pods and the reference differ only in paths and the spread of the 2 ranks over pods.
TRAIN_SPEC = {
    "data": {"path": "/mnt/checkpoints/data", "synthetic": {"samples": 64, "shards": 2}, "tokenBudget": 512},
    "training": {"steps": TRAIN_STEPS, "learningRate": 3e-3, "warmupSteps": 3},
    "checkpoint": {"persistentPath": "/mnt/checkpoints", "intervalSteps": TRAIN_INTERVAL},
    "resilience": {"hangTimeoutSeconds": 5, "maxRestarts": 2},
}


class Reference:
    """The uninterrupted run: plain torchrun (2 ranks) on this machine, same config, its own copy of the data."""

    def __init__(self, folder: Path, world: int = 2) -> None:
        self.folder, self.world = folder, world
        config = {
            "spec": {
                **TRAIN_SPEC,
                "parallelism": {"nodes": 1, "gpusPerNode": world},
                "data": {**TRAIN_SPEC["data"], "path": str(folder / "data")},
                "checkpoint": {
                    "localPath": str(folder / "local"),
                    "persistentPath": str(folder / "pv"),
                    "persistentClaim": "reference",
                    "intervalSteps": TRAIN_INTERVAL,
                },
            },
            "run": {"jobName": "reference"},
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "OMNITRAIN_TERMINATION_LOG": str(folder / "termination"),
        }
        self.log = folder / "reference.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(world),
                "-m",
                "omnitrain",
                "train",
                "--config",
                str(folder / "config.yaml"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),
        )

    def final(self):
        from omnitrain.trainer.checkpoint.restore import final_checkpoint

        assert self.proc.wait(timeout=300) == 0, self.log.read_text()[-3000:]
        checkpoint = final_checkpoint(str(self.folder / "pv"), "reference")
        assert checkpoint is not None and checkpoint.step == TRAIN_STEPS
        return checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Started when the first test asks for it, so it overlaps that job's start-up and fault."""
    ref = Reference(tmp_path_factory.mktemp("reference"))
    try:
        yield ref
    finally:
        if ref.proc.poll() is None:
            ref.proc.kill()
            ref.proc.wait()


def create_job(
    trainer_operator, name: str, parallelism: dict, extra: dict | None = None, checkpoint: dict | None = None
) -> Path:
    """A job on its own claim (provisioned by the local cluster); returns the claim's folder (the persistent
    checkpoint root)."""
    from kubernetes import client

    from omnitrain.operator import crd

    cluster, api, namespace, log = trainer_operator
    claim = f"{name}-ckpt"
    persistent = cluster.ensure_persistent_claim(namespace, claim, size="1Gi")
    spec = {
        **TRAIN_SPEC,
        "parallelism": parallelism,
        "checkpoint": {
            **TRAIN_SPEC["checkpoint"],
            "persistentClaim": claim,
            "localPath": f"/var/lib/omnitrain/e2e/{name}",
            **(checkpoint or {}),
        },
        "metricsPort": 19400 + int(uuid.uuid4().int % 500),
        **(extra or {}),
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        namespace,
        crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec},
    )
    return persistent


def wait_first_checkpoint(trainer_operator, persistent: Path, name: str) -> None:
    from omnitrain.trainer.checkpoint.restore import final_checkpoint

    wait_until(
        lambda: (c := final_checkpoint(str(persistent), name)) is not None and c.step >= TRAIN_INTERVAL,
        240,
        f"a complete checkpoint (operator log: {trainer_operator[3]})",
        interval=0.1,
    )


def hold_rank(name: str, attempt: int, rank: int) -> None:
    """SIGSTOP one rank's trainer just before its node is deleted: on a loaded machine the few steps after the
    first checkpoint can otherwise end the job before the node's loss reaches the operator (the fault then lands on
    a finished gang and tests nothing). The other ranks block in their next collective; the lost node's processes
    are SIGKILLed with it."""
    os.kill(wait_until(lambda: find_rank_pid(name, attempt, rank), 30, f"rank {rank}'s process"), signal.SIGSTOP)


def wait_finished(trainer_operator, name: str) -> dict:
    cluster, api, namespace, log = trainer_operator
    st = wait_until(
        lambda: (s := job_status(api, namespace, name)).get("phase") in ("Succeeded", "Failed") and s,
        240,
        f"job {name} to finish (operator log: {log})",
    )
    assert st["phase"] == "Succeeded", (st, pod_logs(cluster, api, namespace, name))
    return st


def assert_recovered_like_the_reference(
    st: dict, persistent: Path, name: str, reference: Reference, restarts: int = 1
) -> None:
    """`restarts` counted gang restarts, rank 0's goodput with the recovery as badput, final checkpoint ==
    reference's."""
    assert st["restarts"] == restarts and st["attempt"] == restarts, st
    goodput = st["goodput"]
    assert 0 < goodput["ratio"] < 1 and goodput["wallSeconds"] > goodput["productiveSeconds"] > 0
    # failure -> next attempt's pods (recovery), and in place announcement -> first step (restart_barrier, or
    # spare_promotion when a hot spare took the rank); a lost node is announced within the second its workers still
    # run in, so in place the gap may all be the barrier
    badput = goodput["badputSeconds"]
    barrier = badput.get("restart_barrier", 0) + badput.get("spare_promotion", 0)
    assert badput["recovery"] + barrier > 0, goodput
    assert_final_checkpoint_like_the_reference(persistent, name, reference)


def assert_final_checkpoint_like_the_reference(persistent: Path, name: str, reference: Reference) -> None:
    import torch

    from omnitrain.trainer.checkpoint.restore import final_checkpoint, read_shard

    interrupted = final_checkpoint(str(persistent), name)
    assert interrupted.step == TRAIN_STEPS
    want_checkpoint = reference.final()
    for rank in range(reference.world):
        got, want = tensors(read_shard(interrupted, rank)[0]), tensors(read_shard(want_checkpoint, rank)[0])
        assert got.keys() == want.keys() and got
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"rank {rank}: {different[:5]}"


def test_real_trainer_one_rank_sigstopped_in_a_two_pod_gang_resumes_and_matches_an_uninterrupted_run(
    trainer_operator, reference
):
    """2 pods x 1 rank; rank 1 SIGSTOP'd after the first checkpoint: rank 0, in the other pod, blocks in its
    cross-pod all-reduce; both watchdogs find no progress and end their pods with 42 (HangDetected); restart,
    resume, Succeeded, same parameters as uninterrupted."""
    name = f"hang-{uuid.uuid4().hex[:5]}"
    with node_pool(trainer_operator, name, 2):
        persistent = create_job(
            trainer_operator,
            name,
            {"nodes": 2, "gpusPerNode": 1},
            {"scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}}},
        )
        wait_first_checkpoint(trainer_operator, persistent, name)
        os.kill(wait_until(lambda: find_rank_pid(name, 0, 1), 30, "rank 1's process"), signal.SIGSTOP)
        st = wait_finished(trainer_operator, name)
        assert st["lastFailure"]["exitCode"] == 42 and st["lastFailure"]["reason"] == "HangDetected", st
        assert_recovered_like_the_reference(st, persistent, name, reference)


def test_real_trainer_one_rank_killed_resumes_and_matches_an_uninterrupted_run(trainer_operator, reference):
    """Rank 1 SIGKILLed after the first checkpoint: torchrun sees its worker die, stops the other and exits 1; the
    watchdog passes the code on; restart, resume, Succeeded, same parameters as uninterrupted."""
    name = f"kill-{uuid.uuid4().hex[:5]}"
    persistent = create_job(trainer_operator, name, {"nodes": 1, "gpusPerNode": 2})
    wait_first_checkpoint(trainer_operator, persistent, name)
    os.kill(wait_until(lambda: find_rank_pid(name, 0, 1), 30, "rank 1's process"), signal.SIGKILL)
    st = wait_finished(trainer_operator, name)
    assert st["lastFailure"]["exitCode"] == 1 and st["lastFailureClass"] == "Crash", st
    assert_recovered_like_the_reference(st, persistent, name, reference)


@contextlib.contextmanager
def node_pool(trainer_operator, name: str, count: int):
    """`count` fresh 1-GPU local nodes labelled omnitrain.dev/e2e-pool=<name> (the job's nodeSelector), deleted after:
    each gang gets nodes of its own, whatever earlier tests left on the shared ones."""
    from kubernetes import client

    cluster, api, _, _ = trainer_operator
    core = client.CoreV1Api(api)
    pool = [f"{name}-{chr(ord('a') + i)}" for i in range(count)]
    for node in pool:
        cluster.add_node(node, gpus=1)
    try:
        cluster.wait_nodes_ready(pool, timeout_s=60)
        for node in pool:
            core.patch_node(node, {"metadata": {"labels": {"omnitrain.dev/e2e-pool": name}}})
        yield pool
    finally:
        for node in pool:
            cluster.delete_node(node)


def attempt_pods(core, namespace: str, name: str, attempt: int) -> list:
    return [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith(f"{name}-a{attempt}-")]


def test_real_trainer_node_deleted_restarts_the_gang_on_another_node_from_the_persistent_checkpoint(
    trainer_operator, reference
):
    """2 pods x 1 rank on a pool of three 1-GPU nodes; rank 1's node is deleted after the first checkpoint. The
    operator sees the Node gone (watch event, no pod event comes: no kubelet is left to report), force-deletes the
    lost pod, gang-restarts; one pod of the next attempt lands on the spare node, the gang resumes from the
    persistent checkpoint."""
    from kubernetes import client

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"node-{uuid.uuid4().hex[:5]}"
    with node_pool(trainer_operator, name, 3) as pool:
        persistent = create_job(
            trainer_operator,
            name,
            {"nodes": 2, "gpusPerNode": 1},
            {"scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}}},
        )
        wait_first_checkpoint(trainer_operator, persistent, name)
        first = {p.metadata.name: p.spec.node_name for p in attempt_pods(core, namespace, name, 0)}
        lost = first[f"{name}-a0-n1"]
        hold_rank(name, 0, 1)
        deleted_at = time.monotonic()
        assert cluster.delete_node(lost)
        wait_until(
            lambda: (
                (pods := attempt_pods(core, namespace, name, 1))
                and len(pods) == 2
                and all(p.status.phase == "Running" for p in pods)
            ),
            120,
            "attempt 1's pods Running",
            interval=0.1,
        )
        print(f"node deleted -> attempt 1's pods Running: {time.monotonic() - deleted_at:.1f} s")
        st = wait_finished(trainer_operator, name)
        assert st["lastFailure"]["reason"] == "NodeLost" and st["lastFailure"]["node"] == lost, st
        assert "exitCode" not in st["lastFailure"] and st["lastFailureClass"] == "NodeLost", st
        placed = {p.metadata.name: p.spec.node_name for p in attempt_pods(core, namespace, name, 1)}
        assert lost not in placed.values() and set(placed.values()) <= set(pool), placed
        # attempt 1 resumed (rank 0's metrics log on the claim); one of its pods is on the spare node, which never
        # held a node-local copy, so the gang's restore came from the persistent claim
        spare = next(n for n in pool if n not in first.values())
        assert spare in placed.values(), placed
        records = [json.loads(line) for line in (persistent / name / "metrics" / "attempt-0001.jsonl").open()]
        assert any(r["kind"] == "restore" and r.get("step", 0) >= TRAIN_INTERVAL for r in records), records[:5]
        assert_recovered_like_the_reference(st, persistent, name, reference)


# ---- in-place gang restart (spec.resilience.restartMode: InPlace) ----------------------------------------------
# 3 pods x 1 rank: the healthy pods keep running (same UIDs); their supervisors start the next generation when the
# operator announces it in <job>-gang. Compared with an uninterrupted 3-rank run.
# hangTimeoutSeconds 8: three pods and the 3-rank reference start together on 2 cores; start-up's leash is 10x.
IN_PLACE = {"resilience": {**TRAIN_SPEC["resilience"], "restartMode": "InPlace", "hangTimeoutSeconds": 8}}


@pytest.fixture(scope="module")
def reference3(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("reference3"), world=3)
    try:
        yield ref
    finally:
        if ref.proc.poll() is None:
            ref.proc.kill()
            ref.proc.wait()


def job_pods(core, namespace: str, name: str) -> dict:
    """name -> (uid, node, restart count of the trainer container) of the job's pods now."""
    out = {}
    for p in core.list_namespaced_pod(namespace, label_selector=f"omnitrain.io/job-name={name}").items:
        restarts = sum(c.restart_count for c in p.status.container_statuses or [])
        out[p.metadata.name] = (p.metadata.uid, p.spec.node_name, restarts)
    return out


def announced_generation(core, namespace: str, name: str) -> int | None:
    from omnitrain import gang
    from omnitrain.operator import plan

    cm = core.read_namespaced_config_map(plan.gang_config_map_name(name), namespace)
    announced = gang.GangAnnouncement.from_json(cm.data[gang.GANG_FILE])
    return announced.generation


@pytest.mark.parametrize(
    ("signum", "failure_class", "reason"),
    [(signal.SIGKILL, "Crash", "WorkersFailed"), (signal.SIGSTOP, "Hang", "HangDetected")],
    ids=["sigkill", "sigstop"],
)
def test_in_place_one_rank_faulted_keeps_every_pod_and_matches_an_uninterrupted_run(
    trainer_operator, reference3, signum, failure_class, reason
):
    """Rank 1 SIGKILLed (its torchrun fails) or SIGSTOP'd (the watchdogs find no progress) after the first
    checkpoint: the supervisors report by ending their containers, not their pods (the kubelet starts them again in
    the same pods); the operator announces generation 1 and creates nothing; every pod's supervisor starts
    generation 1, which restores from the node-local checkpoints; Succeeded with the same pods (UIDs) and a final
    checkpoint equal to an uninterrupted run's."""
    from kubernetes import client

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"ip{signum.name[3:].lower()}-{uuid.uuid4().hex[:5]}"
    with node_pool(trainer_operator, name, 3):
        persistent = create_job(
            trainer_operator,
            name,
            {"nodes": 3, "gpusPerNode": 1},
            {**IN_PLACE, "scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}}},
        )
        wait_first_checkpoint(trainer_operator, persistent, name)
        before = job_pods(core, namespace, name)
        os.kill(wait_until(lambda: find_rank_pid(name, 0, 1), 30, "rank 1's process"), signum)
        st = wait_finished(trainer_operator, name)
        after = job_pods(core, namespace, name)
        assert {n: v[:2] for n, v in after.items()} == {n: v[:2] for n, v in before.items()}, (before, after)
        assert any(v[2] > 0 for v in after.values()), after  # the report was a container's end, in its pod
        assert announced_generation(core, namespace, name) == 1
        assert st["lastFailureClass"] == failure_class and st["lastFailure"]["reason"] == reason, st
        assert st["children"]["pods"] == sorted(before), st
        assert_recovered_like_the_reference(st, persistent, name, reference3)


def test_in_place_node_deleted_replaces_only_that_pod_and_a_second_kill_at_the_barrier_is_survived(
    trainer_operator, reference3
):
    """3 pods on a pool of four 1-GPU nodes; rank 1's node is deleted after the first checkpoint: only that pod is
    replaced (on the fourth node), the other two stay (same UIDs). While generation 1 gathers (before its first
    step) rank 2's process is SIGKILLed: a fault during the restart itself; generation 2 follows, and the job ends
    equal to an uninterrupted run."""
    from kubernetes import client

    from omnitrain.operator import plan

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"ipnode-{uuid.uuid4().hex[:5]}"
    with node_pool(trainer_operator, name, 4):
        persistent = create_job(
            trainer_operator,
            name,
            {"nodes": 3, "gpusPerNode": 1},
            {**IN_PLACE, "scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}}},
        )
        wait_first_checkpoint(trainer_operator, persistent, name)
        before = job_pods(core, namespace, name)
        lost_pod = plan.pod_name(name, 0, 1)
        hold_rank(name, 0, 1)
        assert cluster.delete_node(before[lost_pod][1])
        # generation 1: rank 2 (a pod that stays) is killed as soon as its new worker exists, before any step
        pid = wait_until(lambda: find_rank_pid(name, 1, 2), 120, "generation 1's rank 2", interval=0.05)
        os.kill(pid, signal.SIGKILL)
        st = wait_finished(trainer_operator, name)
        after = job_pods(core, namespace, name)
        kept = {n: v[0] for n, v in before.items() if n != lost_pod}
        assert {n: after[n][0] for n in kept} == kept, (before, after)
        assert lost_pod not in after and plan.pod_name(name, 1, 1) in after, after
        assert after[plan.pod_name(name, 1, 1)][1] not in {v[1] for v in before.values()}
        assert announced_generation(core, namespace, name) == 2
        assert_recovered_like_the_reference(st, persistent, name, reference3, restarts=2)


def test_in_place_lost_node_rank_moves_to_the_hot_spare(trainer_operator, reference3):
    """3 pods and 1 hot spare on a pool of five 1-GPU nodes; rank 1's node is deleted after the first checkpoint:
    the spare (started with the gang, waiting) becomes rank 1 at generation 1 with no pod scheduled on the critical
    path, a new spare is requested in the background, and the job ends equal to an uninterrupted run."""
    from kubernetes import client

    from omnitrain.operator import plan

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"ipspare-{uuid.uuid4().hex[:5]}"
    resilience = {**IN_PLACE["resilience"], "spareNodes": 1}
    with node_pool(trainer_operator, name, 5):
        persistent = create_job(
            trainer_operator,
            name,
            {"nodes": 3, "gpusPerNode": 1},
            {"resilience": resilience, "scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}}},
            checkpoint={"peerReplicas": 1},
        )
        spare = plan.spare_name(name, 0)
        wait_until(lambda: job_status(api, namespace, name).get("sparesReady") == 1, 120, "the spare Running")
        wait_first_checkpoint(trainer_operator, persistent, name)
        before = job_pods(core, namespace, name)
        lost_pod = plan.pod_name(name, 0, 1)
        hold_rank(name, 0, 1)
        assert cluster.delete_node(before[lost_pod][1])
        st = wait_finished(trainer_operator, name)
        after = job_pods(core, namespace, name)
        assert st["children"]["pods"] == [plan.pod_name(name, 0, 0), spare, plan.pod_name(name, 0, 2)], st
        assert after[spare][0] == before[spare][0]  # the same pod, promoted
        assert plan.spare_name(name, 1) in st["children"]["spares"], st
        # the spare's node never held rank 1's shards: it restored from the peer copy on rank 2's node
        records = [json.loads(line) for line in (persistent / name / "metrics" / "attempt-0001.jsonl").open()]
        restore = next(r for r in records if r["kind"] == "restore")
        assert restore["sources"] == ["local", "peer", "local"] and restore["source"] == "peer", restore
        badput = st["goodput"]["badputSeconds"]
        assert badput["spare_promotion"] > 0 and badput["restart_barrier"] == 0, badput
        # the status rounds to 0.1 s and a tiny peer read can be faster: the record's own seconds are the proof
        assert restore["seconds"] > 0 and badput["checkpoint_restore"] == 0, (restore, badput)
        # the spare is reserved capacity: 3 nodes' productive time over the 4 nodes held
        assert st["goodput"]["reservedRatio"] == round(st["goodput"]["ratio"] * 3 / 4, 4), st["goodput"]
        assert_recovered_like_the_reference(st, persistent, name, reference3)


# ---- a gang that cannot be placed whole (spec.scheduling.scheduleTimeoutSeconds) -----------------------------------


def test_a_gang_larger_than_the_free_nodes_holds_nothing_after_the_timeout_and_runs_when_a_node_comes(
    trainer_operator, reference3
):
    """3 pods x 1 rank on a pool of 3 nodes, one cordoned: two pods get nodes and wait in rendezvous, one is
    Unschedulable. After scheduleTimeoutSeconds every pod is gone (no trainer process left) and the job is Queued
    with the scheduler's words, no restart spent; the node is uncordoned, the next try is placed whole and trains
    like an uninterrupted 3-rank run."""
    from kubernetes import client

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"unplaced-{uuid.uuid4().hex[:5]}"
    with node_pool(trainer_operator, name, 3) as pool:
        core.patch_node(pool[2], {"spec": {"unschedulable": True}})
        persistent = create_job(
            trainer_operator,
            name,
            {"nodes": 3, "gpusPerNode": 1},
            {
                "scheduling": {
                    "nodeSelector": {"omnitrain.dev/e2e-pool": name},
                    "scheduleTimeoutSeconds": 3,
                    "requeueBackoffSeconds": 2,
                }
            },
        )
        wait_until(
            lambda: len([p for p in attempt_pods(core, namespace, name, 0) if p.status.phase == "Running"]) == 2,
            60,
            "two of attempt 0's pods Running",
        )
        st = wait_until(
            lambda: (s := job_status(api, namespace, name)).get("phase") == "Queued" and s,
            60,
            f"the job Queued (operator log: {log})",
            interval=0.1,
        )
        queued = next(c for c in st["conditions"] if c["type"] == "Queued")
        assert queued["status"] == "True" and queued["reason"] == "GangUnschedulable", queued
        assert "scheduleTimeoutSeconds=3" in queued["message"] and "nodes are available" in queued["message"], queued
        assert st["restarts"] == 0 and st["totalRestarts"] == 0 and st["requeues"] == 1, st
        # holds nothing: the pods are gone and so are their trainers
        wait_until(lambda: not attempt_pods(core, namespace, name, 0), 60, "attempt 0's pods gone")
        assert all(find_rank_pid(name, 0, rank) is None for rank in range(3))
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        assert any(e.reason == "GangUnschedulable" and e.type == "Warning" for e in events), [e.reason for e in events]
        core.patch_node(pool[2], {"spec": {"unschedulable": False}})
        st = wait_finished(trainer_operator, name)
        assert st["restarts"] == 0 and st["totalRestarts"] == 0, st
        assert st["attempt"] == st["requeues"] >= 1, st
        assert next(c for c in st["conditions"] if c["type"] == "Queued")["status"] == "False", st
        placed = {p.spec.node_name for p in attempt_pods(core, namespace, name, st["attempt"])}
        assert placed == set(pool), placed
        assert_final_checkpoint_like_the_reference(persistent, name, reference3)


# ---- gang admission by the real Kueue manager (spec.scheduling.queueName) ----------------------------------------
# Last in this module: it marks the module's namespace as Kueue's (its pod webhook then sees every pod created here).


def test_two_gangs_over_the_quota_one_waits_queued_with_no_pod_running_then_runs_when_the_first_finishes(
    trainer_operator, reference
):
    """Kueue (built from its module, on loopback) with a ClusterQueue of 2 nvidia.com/gpu; two 2-pod x 1-GPU jobs on
    4 free nodes, both on its queue. Kueue admits one pod group whole; the other job is Queued with Kueue's words,
    its pods gated and on no node, until the first job's pods succeed. Both train like the uninterrupted run, and
    no restart is spent."""
    from kubernetes import client

    from omnitrain.devcluster import kueue

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"kq-{uuid.uuid4().hex[:5]}"
    with node_pool(trainer_operator, name, 4):
        cluster.start_kueue([namespace], gpus=2)
        jobs = [f"{name}-x", f"{name}-y"]
        claims = {}
        for job in jobs:
            claims[job] = create_job(
                trainer_operator,
                job,
                {"nodes": 2, "gpusPerNode": 1},
                {"scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}, "queueName": kueue.LOCAL_QUEUE}},
            )

        def one_running_one_queued():
            phases = {job: job_status(api, namespace, job).get("phase") for job in jobs}
            running = [j for j, ph in phases.items() if ph == "Running"]
            queued = [j for j, ph in phases.items() if ph == "Queued"]
            return (running[0], queued[0]) if running and queued else None

        first, second = wait_until(one_running_one_queued, 120, f"one job Running, one Queued (operator log: {log})")

        def queued_condition():
            return next(c for c in job_status(api, namespace, second)["conditions"] if c["type"] == "Queued")

        # the first pass may come before Kueue made the Workload; the job looks again every 10 s meanwhile
        queued = wait_until(
            lambda: "quota" in (c := queued_condition())["message"].lower() and c, 60, "Kueue's reason in the condition"
        )
        assert queued["status"] == "True" and queued["reason"] == "WaitingForAdmission", queued
        assert f"workload {second}-a0" in queued["message"], queued
        waiting = attempt_pods(core, namespace, second, 0)
        assert len(waiting) == 2
        for pod in waiting:  # held back by Kueue: on no node, nothing started
            assert pod.spec.node_name is None and pod.status.phase == "Pending", pod.status
            assert "kueue.x-k8s.io/admission" in [g.name for g in pod.spec.scheduling_gates or []]
        assert all(find_rank_pid(second, 0, rank) is None for rank in range(2))
        # the operator restarted while a job is Queued: it picks the job up where it was (the same gated pods, the
        # same attempt), launches nothing twice and spends nothing
        gated = {p.metadata.name: p.metadata.uid for p in waiting}
        trainer_operator.restart()
        wait_until(
            lambda: "omnitrain operator: namespaces=" in log.read_text().rsplit("Signal SIGTERM", 1)[-1],
            60,
            f"the operator started again (log: {log})",
        )
        st = job_status(api, namespace, second)
        assert (st["phase"], st["attempt"], st["restarts"]) == ("Queued", 0, 0), st
        assert queued_condition()["reason"] == "WaitingForAdmission"
        st = wait_finished(trainer_operator, second)
        assert job_status(api, namespace, first)["phase"] == "Succeeded"
        admitted = next(c for c in st["conditions"] if c["type"] == "Queued")
        assert admitted["status"] == "False" and admitted["reason"] == "Admitted", admitted
        # the pods Kueue admitted are the ones gated before the restart: none was made again
        assert {p.metadata.name: p.metadata.uid for p in attempt_pods(core, namespace, second, 0)} == gated
        for job in jobs:
            st = job_status(api, namespace, job)
            assert st["restarts"] == 0 and st["totalRestarts"] == 0 and st["attempt"] == 0, st
            assert_final_checkpoint_like_the_reference(claims[job], job, reference)


def test_a_high_priority_job_preempts_a_low_one_which_saves_on_sigterm_and_resumes_with_no_restart_spent(
    trainer_operator, reference
):
    """The same queue (2 nvidia.com/gpu) with both jobs of 2 pods x 1 GPU: a low-priority job trains; after its first
    checkpoint its ranks are held (SIGSTOP) so it cannot finish first; a high-priority job arrives. Kueue preempts
    the low job's Workload: its pods get TerminationTarget and are deleted, the ranks (let go again) get SIGTERM,
    agree on the step, write a final checkpoint off the interval and exit 44. The low job is Preempted and Queued
    while the high one trains, then is admitted again, resumes from that checkpoint and ends bitwise equal to the
    uninterrupted run, with restarts and totalRestarts 0 and preemptions 1."""
    from kubernetes import client

    from omnitrain.devcluster import kueue
    from omnitrain.trainer.checkpoint.restore import discover

    cluster, api, namespace, log = trainer_operator
    core = client.CoreV1Api(api)
    name = f"kp-{uuid.uuid4().hex[:5]}"
    low, high = f"{name}-low", f"{name}-high"

    def queued_job(job: str, priority: str) -> Path:
        return create_job(
            trainer_operator,
            job,
            {"nodes": 2, "gpusPerNode": 1},
            {
                "scheduling": {
                    "nodeSelector": {"omnitrain.dev/e2e-pool": name},
                    "queueName": kueue.LOCAL_QUEUE,
                    "priorityClassName": priority,
                    "terminationGracePeriodSeconds": 60,
                },
                # held ranks must not look hung to the watchdog while the preemption is on its way
                "resilience": {"hangTimeoutSeconds": 120, "maxRestarts": 2},
            },
        )

    with node_pool(trainer_operator, name, 4):
        cluster.start_kueue([namespace], gpus=2)
        low_claim = queued_job(low, "omnitrain-low")
        wait_first_checkpoint(trainer_operator, low_claim, low)
        held = [wait_until(lambda r=r: find_rank_pid(low, 0, r), 30, f"rank {r}'s process") for r in range(2)]
        for pid in held:
            os.kill(pid, signal.SIGSTOP)
        try:
            high_claim = queued_job(high, "omnitrain-high")
            wait_until(
                lambda: (
                    (pods := attempt_pods(core, namespace, low, 0)) and all(p.metadata.deletion_timestamp for p in pods)
                ),
                60,
                f"Kueue to preempt {low}'s pods (operator log: {log})",
            )
        finally:
            for pid in held:
                os.kill(pid, signal.SIGCONT)

        def preempted():
            st = job_status(api, namespace, low)
            c = next((c for c in st.get("conditions") or [] if c["type"] == "Preempted"), None)
            return st if c and c["status"] == "True" else None

        st = wait_until(preempted, 90, f"{low} Preempted (operator log: {log})")
        condition = next(c for c in st["conditions"] if c["type"] == "Preempted")
        # Kueue's words: reason WorkloadEvictedDueToPreempted, "Preempted to accommodate a workload ..."
        assert condition["reason"].startswith("WorkloadEvicted"), condition
        assert "Preempted to accommodate" in condition["message"], condition
        # the ranks' SIGTERM save: a complete checkpoint off the interval, the step the ranks agreed on
        wait_until(lambda: not attempt_pods(core, namespace, low, 0), 90, f"{low}'s preempted pods gone")
        saved = sorted(discover({"persistent": str(low_claim)}, low, None))
        stopped_at = max(saved)
        assert TRAIN_INTERVAL < stopped_at < TRAIN_STEPS and stopped_at % TRAIN_INTERVAL, saved
        st = wait_until(
            lambda: (s := job_status(api, namespace, low)).get("phase") == "Queued" and s,
            60,
            f"{low} Queued behind {high}",
        )
        assert (st["restarts"], st["totalRestarts"], st["preemptions"]) == (0, 0, 1), st
        # class Preempted whichever the operator saw first: Kueue's eviction (its reason, no exit code yet) or the
        # ranks' exit 44 (reason Preempted)
        assert st["lastFailureClass"] == "Preempted", st
        assert st["lastFailure"]["reason"] in ("Preempted", condition["reason"]), st
        assert st["lastFailure"].get("exitCode") in (None, 44), st

        wait_finished(trainer_operator, high)
        st = wait_finished(trainer_operator, low)
        assert (st["restarts"], st["totalRestarts"], st["preemptions"], st["attempt"]) == (0, 0, 1, 1), st
        resumed = next(c for c in st["conditions"] if c["type"] == "Preempted")
        assert resumed["status"] == "False" and resumed["reason"] == "Resumed", st
        logs = pod_logs(cluster, api, namespace, f"{low}-a1")
        assert f"from step {stopped_at} to {TRAIN_STEPS}" in logs, logs
        assert_final_checkpoint_like_the_reference(low_claim, low, reference)
        assert_final_checkpoint_like_the_reference(high_claim, high, reference)
