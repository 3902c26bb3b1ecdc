"""The watchdog following restart generations (in-place gang restarts): real supervisor processes, a gang file the
test announces into (write temp + rename, as the kubelet swaps ConfigMap volumes), gang_worker.py as the command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.devcluster.testing import wait_for
from omnitrain.gang import GangAnnouncement
from omnitrain.metrics_log import read_job_log
from omnitrain.resilience.generations import (
    ACKED_GENERATION,
    FAILED_GENERATION,
    Action,
    Do,
    generation_env,
    next_action,
    read_generation,
    write_generation,
)
from omnitrain.timestamps import now_rfc3339, parse_rfc3339

HERE = Path(__file__).parent
WORKER = str(HERE / "gang_worker.py")
FAKE = str(HERE / "fake_trainer.py")
POD = "video-worker-1"
DEADLINE = 60.0
TORCH_DEADLINE = 600.0  # torchrun and its workers import torch: a minute and more each on the loaded 2-core machine


ANNOUNCED = now_rfc3339(time.time() - 60)  # the operator's clock, a minute before the supervisor reads it


def announce(
    path: Path, generation: int, members: dict[str, int], port: int, nnodes: int | None = None, addr: str = ""
) -> None:
    ann = GangAnnouncement(
        generation=generation,
        members=members,
        master_addr=addr or f"video-worker-0.gen{generation}",
        master_port=port,
        nnodes=nnodes if nnodes is not None else len(members),
        announced=ANNOUNCED,
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(ann.to_json())
    os.replace(tmp, path)


class Pod:
    """One supervisor process of pod `pod` (a container of it: a second one with the same `pod` and state dir is
    the kubelet's restart in place); its stderr goes to a file the test waits on."""

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        command: list[str],
        timeout: float = 30.0,
        pod: str = POD,
        state: str = "state",
        deadline: float = DEADLINE,
    ) -> None:
        self.tmp_path, self.log, self.deadline = tmp_path, tmp_path / f"{name}.log", deadline
        self.termination_log = tmp_path / f"termination-log-{pod}"
        cmd = [
            sys.executable,
            "-m",
            "omnitrain",
            "watchdog",
            "--timeout",
            str(timeout),
            "--workers",
            "1",
            "--heartbeat-dir",
            str(tmp_path / f"hb-{name}"),
            "--rdma-root",
            str(tmp_path / "rdma"),
            "--poll",
            "0.1",
            "--status-every",
            "1",
            "--no-gpu-health",
            "--termination-log",
            str(self.termination_log),
            "--metrics-log-dir",
            str(tmp_path / "metrics"),
            "--",
            *command,
        ]
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            OMNITRAIN_GANG_FILE=str(tmp_path / "gang.json"),
            POD_NAME=pod,
            OMNITRAIN_STATE_DIR=str(tmp_path / state),
        )
        self._stderr = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None or needle in self.text(), f"supervisor exited:\n{self.text()[-3000:]}"
            return needle in self.text()

        wait_for(seen, self.deadline, f"{needle!r} in the supervisor's log")

    def exit_code(self) -> int:
        return self.proc.wait(timeout=self.deadline)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE)
        finally:
            self._stderr.close()

    def termination(self) -> TerminationMessage | None:
        path = self.termination_log
        return TerminationMessage.from_json(path.read_text()) if path.exists() else None


@pytest.fixture
def pods():
    started: list[Pod] = []
    yield started
    for pod in started:
        if pod.proc.poll() is None:
            pod.proc.kill()
            pod.proc.wait(timeout=DEADLINE)


def started_env(out: Path, generation: int, rank: int | None = None) -> dict:
    path = out / (f"generation-{generation}" + (f"-rank-{rank}" if rank is not None else "") + ".json")
    return wait_for(lambda: json.loads(path.read_text()), DEADLINE, f"the workers of generation {generation}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def worker(out: Path, *args: str) -> list[str]:
    return [sys.executable, WORKER, "--out", str(out), *args]


# --- (a), (b): start as the announced rank; a newer generation restarts the workers in the same supervisor ------
def test_starts_as_the_announced_rank_and_port_then_restarts_for_a_newer_generation(tmp_path, pods):
    out = tmp_path / "out"
    announce(tmp_path / "gang.json", 3, {"video-worker-0": 0, POD: 1}, port=29503)
    pod = Pod(tmp_path, "pod", worker(out))
    pods.append(pod)
    first = started_env(out, 3)
    assert {k: first[k] for k in ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_PORT", "MASTER_PORT")} == {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "1",
        "PET_MASTER_PORT": "29503",
        "MASTER_PORT": "29503",
    }
    assert first["PET_MASTER_ADDR"] == first["MASTER_ADDR"] == "video-worker-0.gen3"
    assert first["ppid"] == pod.proc.pid  # the supervisor's own child
    pod.wait_log("generation 3: node rank 1 started")
    assert read_generation(tmp_path / "state", ACKED_GENERATION) == 3

    # Generation 4: this pod is now rank 0 of three, on another port.
    announce(tmp_path / "gang.json", 4, {POD: 0, "video-worker-0": 1, "video-worker-2": 2}, port=29504)
    second = started_env(out, 4)
    assert (second["PET_NODE_RANK"], second["PET_NNODES"], second["PET_MASTER_PORT"]) == ("0", "3", "29504")
    assert second["ppid"] == pod.proc.pid and pod.proc.poll() is None  # same supervisor, not a container restart
    assert second["pid"] != first["pid"]
    wait_for(lambda: not alive(first["pid"]), DEADLINE, "generation 3's worker to be killed")
    pod.wait_log("generation 4: node rank 0 started")
    assert read_generation(tmp_path / "state", ACKED_GENERATION) == 4
    pod.wait_log("rdma no evidence, generation 4")  # the periodic status line names the generation
    # Node rank 0 of a generation dates its announcement in the job's metrics log (goodput's restart barrier);
    # as rank 1 of generation 3 this pod wrote nothing there.
    log = read_job_log(tmp_path / "metrics")
    [record] = log.records
    assert (record["kind"], record["attempt"], record["generation"], record["nnodes"]) == ("generation", 4, 4, 3)
    assert record["time"] == parse_rfc3339(ANNOUNCED) < record["started"]
    assert not (tmp_path / "hb-pod" / "generation-00003").exists()  # the last generation's heartbeats are gone
    assert (tmp_path / "hb-pod" / "generation-00004").is_dir()

    # Pod deletion still stops everything.
    assert pod.stop() == 128 + signal.SIGTERM
    assert not alive(second["pid"])
    assert read_generation(tmp_path / "state", FAILED_GENERATION) is None  # a deletion is not a failure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_torchrun_each_generation_gets_its_rendezvous_and_the_old_ranks_die(tmp_path, pods):
    """The real launch path: torchrun without --nnodes/--node-rank/--master-* reads the supervisor's PET_*; its
    ranks run in sessions of their own, and a newer generation must still kill every one of them."""
    out, torchrun = tmp_path / "out", str(Path(sys.executable).with_name("torchrun"))
    first_port, second_port = free_port(), free_port()
    announce(tmp_path / "gang.json", 0, {POD: 0}, port=first_port, addr="127.0.0.1")
    pod = Pod(tmp_path, "pod", [torchrun, "--nproc-per-node=2", WORKER, "--out", str(out)])
    pods.append(pod)
    first = [started_env(out, 0, rank) for rank in (0, 1)]
    assert [(e["RANK"], e["WORLD_SIZE"], e["MASTER_PORT"]) for e in first] == [
        ("0", "2", str(first_port)),
        ("1", "2", str(first_port)),
    ]
    announce(tmp_path / "gang.json", 1, {POD: 0}, port=second_port, addr="127.0.0.1")
    second = [started_env(out, 1, rank) for rank in (0, 1)]
    assert {e["MASTER_PORT"] for e in second} == {str(second_port)}
    wait_for(lambda: not any(alive(e["pid"]) for e in first), DEADLINE, "generation 0's ranks to be killed")
    assert pod.proc.poll() is None
    pod.stop()
    wait_for(lambda: not any(alive(e["pid"]) for e in second), DEADLINE, "the ranks to stop with the pod")
    assert read_generation(tmp_path / "state", FAILED_GENERATION) is None


def test_workers_failing_once_a_newer_generation_is_out_restart_in_place(tmp_path, pods):
    """A healthy pod's ranks fail because their peer died, and the next generation is already announced: the
    supervisor starts it in the same process instead of ending the pod (whichever of the two it saw first)."""
    out, gang_file = tmp_path / "out", tmp_path / "gang.json"
    announce(gang_file, 1, {POD: 0}, port=29511)
    pod = Pod(tmp_path, "pod", worker(out, "--fail-on-newer", str(gang_file)))
    pods.append(pod)
    first = started_env(out, 1)
    announce(gang_file, 2, {POD: 0}, port=29512)
    second = started_env(out, 2)
    assert second["ppid"] == first["ppid"] == pod.proc.pid and pod.proc.poll() is None
    assert read_generation(tmp_path / "state", FAILED_GENERATION) is None
    assert pod.stop() == 128 + signal.SIGTERM


@pytest.mark.slow
def test_two_pods_under_torchrun_recover_in_place_from_a_dead_rank(tmp_path, pods):
    """Two pods' supervisors form one gloo gang through torchrun; node rank 1 dies in generation 0. The test plays
    the operator (announce generation 1 once pod B has ended) and the kubelet (start an ended pod's container again,
    same state dir). Pod A's rank fails too when its peer goes: either before the announcement (its container
    restarts) or after it (it starts generation 1 in place); both must train generation 1 to the end."""
    out, gang_file = tmp_path / "out", tmp_path / "gang.json"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    members = {"pod-a": 0, "pod-b": 1}
    command = [
        torchrun,
        "--nproc-per-node=1",
        str(HERE / "gang_allreduce.py"),
        "--out",
        str(out),
        "--steps",
        "30",
        "--die-generation",
        "0",
        "--die-rank",
        "1",
    ]

    def container(pod: str, n: int) -> Pod:
        started = Pod(
            tmp_path, f"{pod}-{n}", command, timeout=120.0, pod=pod, state=f"state-{pod}", deadline=TORCH_DEADLINE
        )
        pods.append(started)
        return started

    announce(gang_file, 0, members, port=free_port(), addr="127.0.0.1")
    a, b = container("pod-a", 0), container("pod-b", 0)
    assert b.exit_code() == 1, b.text()[-3000:]  # its rank died at step 10
    msg = b.termination()
    assert msg is not None and (msg.reason, msg.generation) == ("WorkersFailed", 0)
    announce(gang_file, 1, members, port=free_port(), addr="127.0.0.1")
    b = container("pod-b", 1)
    # Pod A: ended (its rank failed before the announcement) or following generation 1 in the same process.
    wait_for(
        lambda: a.proc.poll() is not None or "generation 1: node rank 0 started" in a.text(), TORCH_DEADLINE, "pod A"
    )
    if a.proc.poll() is not None:
        assert a.proc.returncode == 1 and read_generation(tmp_path / "state-pod-a", FAILED_GENERATION) == 0
        a = container("pod-a", 1)
    assert a.exit_code() == 0, a.text()[-3000:]
    assert b.exit_code() == 0, b.text()[-3000:]
    assert [(out / f"generation-1-rank-{r}.step").read_text() for r in (0, 1)] == ["30", "30"]
    assert int((out / "generation-0-rank-1.step").read_text()) == 9  # generation 0 really trained before the fault


# --- (c): a failure is recorded; the restarted container waits for a newer generation -----------------------
def test_failed_workers_end_the_pod_and_the_restarted_supervisor_waits_for_a_newer_generation(tmp_path, pods):
    out = tmp_path / "out"
    announce(tmp_path / "gang.json", 1, {POD: 0}, port=29501)
    first = Pod(tmp_path, "first", worker(out, "--fail-in", "1", "--finish-in", "2"))
    pods.append(first)
    assert first.exit_code() == 1, first.text()[-3000:]
    msg = first.termination()
    assert msg is not None and (msg.reason, msg.generation) == ("WorkersFailed", 1)
    assert read_generation(tmp_path / "state", FAILED_GENERATION) == 1

    # The kubelet restarts the container in place: same state dir, the announcement still says generation 1.
    (out / "generation-1.json").unlink()
    second = Pod(tmp_path, "second", worker(out, "--fail-in", "1", "--finish-in", "2"))
    pods.append(second)
    second.wait_log("workers failed in generation 1; waiting for a newer one")
    assert not (out / "generation-1.json").exists()  # it did not rejoin the generation it failed in
    announce(tmp_path / "gang.json", 2, {POD: 0}, port=29502)
    assert started_env(out, 2)["PET_MASTER_PORT"] == "29502"
    assert second.exit_code() == 0  # workers finished: the pod Succeeds
    second.wait_log("generation 2: node rank 0 started")


def test_a_container_killed_without_a_report_does_not_rejoin_its_generation(tmp_path, pods):
    """The previous container started generation 3 (acked) and died without recording a failure (the supervisor
    OOM-killed, say): its rendezvous is over, so the next one waits for generation 4."""
    out = tmp_path / "out"
    write_generation(tmp_path / "state", ACKED_GENERATION, 3)
    announce(tmp_path / "gang.json", 3, {POD: 0}, port=29513)
    pod = Pod(tmp_path, "pod", worker(out))
    pods.append(pod)
    pod.wait_log("previous container ran generation 3 and ended without a report")
    pod.wait_log("waiting for a newer one")
    assert not out.exists()
    announce(tmp_path / "gang.json", 4, {POD: 0}, port=29514)
    assert started_env(out, 4)["PET_MASTER_PORT"] == "29514"
    assert pod.stop() == 128 + signal.SIGTERM


def test_a_hang_carries_the_generation_and_records_it(tmp_path, pods):
    announce(tmp_path / "gang.json", 5, {POD: 0}, port=29505)
    command = [sys.executable, FAKE, "blocked", "--rdma-root", str(tmp_path / "rdma")]
    pod = Pod(tmp_path, "pod", command, timeout=2.0)
    pods.append(pod)
    assert pod.exit_code() == ExitCode.HANG, pod.text()[-3000:]
    msg = pod.termination()
    assert msg is not None and (msg.reason, msg.generation, msg.step) == ("HangDetected", 5, 10)
    assert read_generation(tmp_path / "state", FAILED_GENERATION) == 5
    assert (tmp_path / "hb-pod" / "generation-00005" / "hang-evidence.json").exists()


# --- (d): a pod the announcement does not list waits -----------------------------------------------------------
def test_a_pod_not_in_the_members_waits_until_it_is_listed(tmp_path, pods):
    out = tmp_path / "out"
    pod = Pod(tmp_path, "pod", worker(out))
    pods.append(pod)
    pod.wait_log("waiting: no gang announcement yet")
    announce(tmp_path / "gang.json", 7, {"video-worker-0": 0}, port=29507)
    pod.wait_log(f"pod {POD} is not a member of generation 7")
    assert not out.exists()
    announce(tmp_path / "gang.json", 8, {"video-worker-0": 0, POD: 1}, port=29508)
    assert started_env(out, 8)["PET_NODE_RANK"] == "1"
    assert not (out / "generation-7.json").exists()
    assert pod.stop() == 128 + signal.SIGTERM


def test_gang_mode_without_pod_name_is_a_clear_error(tmp_path):
    env = dict(os.environ, OMNITRAIN_GANG_FILE=str(tmp_path / "gang.json"))
    env.pop("POD_NAME", None)
    result = subprocess.run(
        [sys.executable, "-m", "omnitrain", "watchdog", "--timeout", "5", "--", "true"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
    )
    assert result.returncode == ExitCode.CONFIG
    assert "POD_NAME" in result.stderr and "metadata.name" in result.stderr
    assert "Traceback" not in result.stderr


# --- (e): the decision table -----------------------------------------------------------------------------------
def gen(generation: int, members: dict[str, int], spares: tuple[str, ...] = ()) -> GangAnnouncement:
    return GangAnnouncement(generation, members, "m", 29500 + generation, len(members), spares=list(spares))


@pytest.mark.parametrize(
    "announcement, failed, running, expected",
    [
        # nothing announced: wait; while workers run, a missing file is a volume swap, not a stop
        (None, None, None, (Do.WAIT, None, None)),
        (None, None, 2, (Do.KEEP, 2, None)),
        # a member starts as its rank
        (gen(0, {"a": 0, "p": 1}), None, None, (Do.START, 0, 1)),
        # not a member (replaced, or a spare) waits
        (gen(3, {"a": 0}), None, None, (Do.WAIT, 3, None)),
        (gen(3, {"a": 0}, spares=("p",)), None, None, (Do.WAIT, 3, None)),
        # the generation it failed in, or an older one: wait; a newer one: start
        (gen(3, {"p": 0}), 3, None, (Do.WAIT, 3, None)),
        (gen(2, {"p": 0}), 3, None, (Do.WAIT, 2, None)),
        (gen(4, {"p": 2}), 3, None, (Do.START, 4, 2)),
        # running: the same or a stale older generation keeps; a newer one stops, member or not
        (gen(4, {"p": 0}), None, 4, (Do.KEEP, 4, None)),
        (gen(3, {"p": 0}), None, 4, (Do.KEEP, 4, None)),
        (gen(5, {"p": 1}), None, 4, (Do.STOP, 5, None)),
        (gen(5, {"a": 0}), None, 4, (Do.STOP, 5, None)),
    ],
)
def test_next_action_table(announcement, failed, running, expected):
    action = next_action(announcement, "p", failed, running)
    assert isinstance(action, Action)
    assert (action.do, action.generation, action.node_rank) == expected
    if action.do is Do.WAIT:
        assert action.why  # the status line says why


def test_waiting_reasons_name_the_cause():
    assert "spare" in next_action(gen(3, {"a": 0}, spares=("p",)), "p", None, None).why
    assert "failed in generation 3" in next_action(gen(3, {"p": 0}), "p", 3, None).why


@pytest.mark.parametrize(
    "code, announced, expected",
    [
        (1, 5, True),  # a crash (e.g. the peer that died) with the next generation already out: start it in place
        (ExitCode.HANG, 5, True),
        (1, 4, False),  # the generation it failed in: end the pod, the operator needs the report
        (1, None, False),
        (ExitCode.HARDWARE, 5, False),  # the node must go whatever the generation
        (0, 5, False),  # finished: the pod Succeeds
    ],
)
def test_a_failure_after_a_newer_announcement_restarts_in_place(code, announced, expected):
    from omnitrain.resilience.generations import failure_superseded

    announcement = gen(announced, {"p": 0}) if announced is not None else None
    assert failure_superseded(code, announcement, 4) is expected


def test_generation_env_is_what_torchrun_and_the_trainer_read():
    ann = GangAnnouncement(6, {"p": 2}, "job-worker-0.job", 29506, 4)
    assert generation_env(ann, 2) == {
        "PET_NNODES": "4",
        "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": "job-worker-0.job",
        "PET_MASTER_PORT": "29506",
        "MASTER_ADDR": "job-worker-0.job",
        "MASTER_PORT": "29506",
        "OMNITRAIN_ATTEMPT": "6",
    }


def test_generation_files_round_trip_and_tolerate_garbage(tmp_path):
    assert read_generation(tmp_path / "missing", FAILED_GENERATION) is None
    write_generation(tmp_path / "state", FAILED_GENERATION, 7)
    assert read_generation(tmp_path / "state", FAILED_GENERATION) == 7
    (tmp_path / "state" / ACKED_GENERATION).write_text("not a number")
    assert read_generation(tmp_path / "state", ACKED_GENERATION) is None


def test_gang_options_from_the_pod_env(tmp_path, caplog):
    from omnitrain.resilience.watchdog import gang_options

    assert gang_options(None, None, None, {}) is None  # Recreate: nothing changes
    env = {"OMNITRAIN_GANG_FILE": "/etc/omnitrain-gang/gang.json", "POD_NAME": POD, "OMNITRAIN_STATE_DIR": "/st"}
    opts = gang_options(None, None, "/mnt/ckpt/job/metrics", env)
    assert opts is not None
    assert (opts.gang_file, opts.pod_name, opts.state_dir, opts.metrics_log_dir) == (
        "/etc/omnitrain-gang/gang.json",
        POD,
        "/st",
        "/mnt/ckpt/job/metrics",
    )
    given = gang_options(str(tmp_path / "g.json"), str(tmp_path / "s"), None, {"POD_NAME": POD})
    assert given is not None and (given.gang_file, given.state_dir) == (str(tmp_path / "g.json"), str(tmp_path / "s"))
    with caplog.at_level("WARNING"):
        fallback = gang_options(str(tmp_path / "g.json"), None, None, {"POD_NAME": POD})
    assert fallback is not None and Path(fallback.state_dir).is_dir()
    shutil.rmtree(fallback.state_dir)
    assert "OMNITRAIN_STATE_DIR" in caplog.text
    with pytest.raises(ValueError, match="POD_NAME"):
        gang_options(str(tmp_path / "g.json"), None, None, {})
