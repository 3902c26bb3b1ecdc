"""Two operator replicas with leader election (issue 16, "Operator high availability"), against the real API server:
only the Lease's holder acts; the leader killed mid-launch (os._exit after its 3rd creation, as a lost machine)
is replaced by the standby once the lease runs out, which finishes the launch with no duplicate pod; a failure that
happens while the next leader is not yet leading is acted on by it, with the restart counted once.

Short lease times (4 s / 3 s / 0.5 s) keep the test quick; the handover each run measured is printed and
docs/operator.md records it with the defaults."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from pathlib import Path

import dying_operator
import pytest
from control_plane import wait_until
from jobs import create_job, pod_names, pods, set_all, set_hung, status
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.e2e

T = 30
SPEC = {"parallelism": {"nodes": 4, "gpusPerNode": 1}, "training": {"steps": 30}, "resilience": {"maxRestarts": 2}}
LEASE_DURATION_S = 4


def lease_holder(api, namespace: str, name: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity or None


def test_only_the_leader_acts_and_a_standby_takes_over_a_launch_and_a_restart(api, start_operator, operator, namespace):
    ns = namespace
    lease = f"omnitrain-{uuid.uuid4().hex[:6]}"

    def replica(identity: str, command: list[str] | None = None, **env: str):
        return start_operator(
            {
                "OMNITRAIN_NAMESPACES": ns,
                "OMNITRAIN_LEADER_ELECTION": lease,
                "OMNITRAIN_LEADER_ELECTION_NAMESPACE": ns,
                "OMNITRAIN_LEADER_ELECTION_IDENTITY": identity,
                "OMNITRAIN_LEASE_DURATION_SECONDS": str(LEASE_DURATION_S),
                "OMNITRAIN_LEASE_RENEW_DEADLINE_SECONDS": "3",
                "OMNITRAIN_LEASE_RETRY_SECONDS": "0.5",
                **env,
            },
            command=command,
        )

    operator.stop()  # the session operator acts everywhere; here only the replicas may
    try:
        # one create at a time, so the leader dies after exactly: ConfigMap, Service, one pod
        dying = replica("op-a", [sys.executable, str(Path(dying_operator.__file__)), "3"], OMNITRAIN_CREATE_WORKERS="1")
        wait_until(lambda: lease_holder(api, ns, lease) == "op-a", T, f"op-a leading ({dying.log})")
        standby = replica("op-b")
        wait_until(lambda: "standby; lease" in standby.log.read_text(), T, f"op-b standing by ({standby.log})")

        create_job(api, ns, "ha", SPEC)
        wait_until(lambda: dying.proc.poll() is not None, 60, "the leader's exit mid-launch")
        died = time.monotonic()
        assert dying.proc.returncode == dying_operator.EXIT_CODE, dying.tail()
        assert pod_names(api, ns, "ha") == ["ha-a0-n0"]
        # the standby did nothing while the leader lived: it had not even started its handlers
        assert "omnitrain operator: namespaces=" not in standby.log.read_text(), standby.tail()

        wait_until(lambda: lease_holder(api, ns, lease) == "op-b", T, f"op-b taking over ({standby.log})")
        handover = time.monotonic() - died
        print(f"handover after the leader's death: {handover:.1f} s (lease {LEASE_DURATION_S} s, retry 0.5 s)")
        transitions = client.CoordinationV1Api(api).read_namespaced_lease(lease, ns).spec.lease_transitions
        assert transitions == 1, transitions
        wait_until(
            lambda: len(pods(api, ns, "ha")) == 4 and status(api, ns, "ha").get("launchedAttempt") == 0,
            T,
            "all four pods from the new leader",
        )
        assert pod_names(api, ns, "ha") == [f"ha-a0-n{r}" for r in range(4)]
        set_all(api, ns, "ha", "Running")
        wait_until(lambda: status(api, ns, "ha").get("phase") == "Running", T, "Running")

        # a third replica stands by; the leader is SIGKILLed and a rank fails before anyone leads again
        third = replica("op-c")
        wait_until(lambda: "standby; lease" in third.log.read_text(), T, f"op-c standing by ({third.log})")
        standby.proc.send_signal(signal.SIGKILL)
        standby.proc.wait(timeout=T)
        set_hung(api, ns, "ha-a0-n2")
        wait_until(lambda: lease_holder(api, ns, lease) == "op-c", T, f"op-c taking over ({third.log})")
        wait_until(lambda: pod_names(api, ns, "ha") == [f"ha-a1-n{r}" for r in range(4)], T, "attempt 1 from op-c")
        st = status(api, ns, "ha")
        assert (st["attempt"], st["restarts"], st["totalRestarts"]) == (1, 1, 1), st
        assert st["lastFailure"]["reason"] == "HangDetected", st

        # a clean stop hands the lease back at once (empty holder), rather than a lease duration later
        third.stop()
        assert lease_holder(api, ns, lease) is None
    finally:
        operator.start()
