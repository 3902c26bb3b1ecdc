"""In-place gang restart (spec.resilience.restartMode: InPlace) as pure decisions and pure plans: the healthy pods
stay, only the pods that cannot go on are replaced, one announcement per generation (omnitrain.gang)."""

import dataclasses
import json

from omnitrain import gang
from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.operator import plan
from omnitrain.operator.reconcile import PENDING, RESTARTING, RUNNING, parse_spec, reconcile
from omnitrain.resilience.classify import NodeObservation, PodObservation

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
SPEC = {
    "parallelism": {"nodes": 3, "gpusPerNode": 1},
    "resilience": {"maxRestarts": 3, "restartMode": "InPlace"},
}


def step(status, observed, now="2026-12-02T00:00:10Z", nodes=None, spec=SPEC):
    return reconcile(JOB, parse_spec(spec), status, observed, now, generation=1, nodes=nodes)


def running(names, **changes):
    return [
        dataclasses.replace(
            PodObservation(
                name=n, attempt=plan.created_in(n, 0), rank=r, phase="Running", node=f"node-{r}", pod_ip=f"10.0.0.{r}"
            ),
            **changes.get(n, {}),
        )
        for r, n in enumerate(names)
    ]


def ended(generation, code=1, reason="Crash"):
    """What a supervisor leaves after its workers failed in `generation` (the kubelet restarts the container)."""
    msg = TerminationMessage(reason=reason, generation=generation).to_json()
    return {"exit_code": code, "termination_message": msg, "finished_at": "2026-12-02T00:00:05Z"}


def launched_running():
    d = step(None, [])
    assert d.create_attempt == 0 and d.create_pods == ["j-a0-n0", "j-a0-n1", "j-a0-n2"]
    names = d.status.children.pods
    d = step(d.status, running(names))
    assert d.status.phase == RUNNING
    return d.status, names


def test_a_crash_keeps_every_pod_and_announces_the_next_generation():
    st, names = launched_running()
    d = step(st, running(names, **{names[1]: ended(0)}))
    assert d.status.attempt == 1 and d.status.restarts == 1
    assert d.delete_pods == [] and d.force_delete_pods == []  # nobody is replaced: rank 1 restarts in its pod
    assert d.status.children.pods == names
    # announced in the same pass (nothing to wait for), and no pod created
    assert d.create_attempt == 1 and d.create_pods == []
    assert d.status.phase == PENDING and d.status.launched_attempt == 1
    assert [e.reason for e in d.events] == ["GangRestart", "Restarted"]
    assert "3 pods kept, 0 created" in d.events[-1].message
    # with a back-off the announcement waits for it
    backoff = {**SPEC, "resilience": {**SPEC["resilience"], "restartBackoffSeconds": 30}}
    st, names = launched_running()
    d = step(st, running(names, **{names[1]: ended(0)}), spec=backoff)
    assert d.status.phase == RESTARTING and d.create_attempt is None and d.status.restart_not_before


def test_a_crash_of_an_earlier_generation_is_history_not_a_new_failure():
    st, names = launched_running()
    d = step(st, running(names, **{names[1]: ended(0)}))
    # every pod Running in generation 1, rank 1's lastState still shows its end in generation 0
    d = step(d.status, running(names, **{names[1]: ended(0)}))
    assert d.status.phase == RUNNING and d.status.attempt == 1 and d.status.restarts == 1
    # a failure of generation 1 is one
    d = step(d.status, running(names, **{names[2]: ended(1, ExitCode.HANG, "HangDetected")}))
    assert d.status.attempt == 2 and d.status.last_failure_class == "Hang" and d.create_pods == []


def test_an_end_without_a_generation_counts_by_its_time():
    st, names = launched_running()
    d = step(st, running(names, **{names[0]: ended(0)}), now="2026-12-02T00:00:10Z")
    d = step(d.status, running(names), now="2026-12-02T00:00:12Z")
    assert d.status.phase == RUNNING
    oom_before = {"exit_code": 137, "container_reason": "OOMKilled", "finished_at": "2026-12-02T00:00:09Z"}
    d2 = step(d.status, running(names, **{names[2]: oom_before}), now="2026-12-02T00:00:13Z")
    assert d2.status.phase == RUNNING  # it ended before the failure that began generation 1
    oom_after = {**oom_before, "finished_at": "2026-12-02T00:00:12Z"}
    d2 = step(d.status, running(names, **{names[2]: oom_after}), now="2026-12-02T00:00:13Z")
    assert d2.status.attempt == 2 and d2.status.last_failure_class == "OOM"


def test_only_the_pod_on_a_deleted_node_is_replaced():
    st, names = launched_running()
    nodes = {"node-2": NodeObservation(name="node-2", exists=False, ready=False)}
    d = step(st, running(names), nodes=nodes)
    assert d.status.last_failure_class == "NodeLost"
    assert d.force_delete_pods == [names[2]] and d.delete_pods == []
    members = d.status.children.pods
    assert members[:2] == names[:2] and members[2] == plan.pod_name("j", 1, 2)
    # in the same pass: the replacement is created, nothing else
    assert d.create_attempt == 1 and d.create_pods == [members[2]]
    # the next pass: the old pod (still listed, force-deleted) does not hold anything back
    replacement = dataclasses.replace(running(members)[2], node="node-3", phase="Pending")
    d = step(d.status, [*running(names), replacement], nodes=nodes)
    assert d.create_attempt is None and d.force_delete_pods == [names[2]] and d.status.attempt == 1


def test_hardware_evidence_moves_the_rank_off_the_isolated_node():
    st, names = launched_running()
    d = step(st, running(names, **{names[0]: ended(0, ExitCode.HARDWARE, "HardwareFault")}))
    assert d.isolate_nodes == ["node-0"] and d.status.excluded_nodes == ["node-0"]
    assert d.delete_pods == [names[0]]
    assert d.status.children.pods == [plan.pod_name("j", 1, 0), *names[1:]]


def test_a_permanent_failure_still_fails_the_job():
    st, names = launched_running()
    d = step(st, running(names, **{names[0]: ended(0, ExitCode.CONFIG, "ConfigError")}))
    assert d.status.phase == "Failed"


def test_recreate_stays_the_whole_gang():
    spec = {**SPEC, "resilience": {"maxRestarts": 3}}
    d = step(None, [], spec=spec)
    names = d.status.children.pods
    crashed = [dataclasses.replace(p, phase="Failed") if p.rank == 1 else p for p in running(names)]
    d = step(step(d.status, running(names), spec=spec).status, crashed, spec=spec)
    assert d.status.phase == RESTARTING and sorted(d.delete_pods) == sorted(names)
    assert d.create_pods is None


def test_in_place_pods_follow_the_announcement():
    spec = parse_spec(SPEC).spec
    members = ["j-a0-n0", "j-a3-n1", "j-a0-n2"]
    children = plan.plan_children(JOB, spec, 3, members=members, now="2026-12-02T00:00:00Z")
    kinds = [c["kind"] for c in children]
    readers = ["ServiceAccount", "Role", "RoleBinding"]  # the pods' API access to the announcement
    assert kinds == ["ConfigMap", "Service", *readers, "ConfigMap", "Pod", "Pod", "Pod"]
    announced = gang.GangAnnouncement.from_json(children[5]["data"][gang.GANG_FILE])
    assert announced.generation == 3 and announced.members == {n: r for r, n in enumerate(members)}
    assert announced.master_port != spec.metrics_port
    assert announced.master_port == gang.rendezvous_port(plan.master_port("uid-1", spec.metrics_port), 3, 9400)
    pod = children[7]
    assert pod["metadata"]["name"] == "j-a3-n1" and pod["metadata"]["labels"][plan.LABEL_ATTEMPT] == "3"
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}
    assert "PET_NODE_RANK" not in env and "MASTER_PORT" not in env  # the supervisor sets them per generation
    assert env[gang.ENV_POD_NAME] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env[gang.ENV_GANG_FILE] == f"{gang.GANG_MOUNT}/{gang.GANG_FILE}"
    command = pod["spec"]["containers"][0]["command"]
    assert not any(a.startswith(("--node-rank", "--master-addr", "--master-port", "--nnodes")) for a in command)
    assert "--nproc-per-node=$(PET_NPROC_PER_NODE)" in command
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[gang.GANG_VOLUME]["configMap"]["name"] == plan.gang_config_map_name("j")
    assert gang.STATE_VOLUME in volumes
    json.dumps(children)  # plain objects


def test_in_place_command_drops_both_flag_forms():
    cmd = ["torchrun", "--nnodes", "4", "--node-rank=$(R)", "--master-port", "1", "--nproc-per-node=8", "-m", "x"]
    assert plan.in_place_command(cmd) == ["torchrun", "--nproc-per-node=8", "-m", "x"]


def test_rendezvous_port_changes_per_generation_and_skips_the_metrics_port():
    ports = [gang.rendezvous_port(20000, g, avoid=20003) for g in range(gang.PORT_CYCLE)]
    assert len(set(ports)) == gang.PORT_CYCLE and 20003 not in ports
    assert gang.rendezvous_port(20000, gang.PORT_CYCLE) == gang.rendezvous_port(20000, 0)


SPARES = {**SPEC, "resilience": {**SPEC["resilience"], "spareNodes": 1}}


def test_spares_are_created_with_the_gang_and_need_in_place():
    d = step(None, [], spec=SPARES)
    assert d.create_pods == ["j-a0-n0", "j-a0-n1", "j-a0-n2", "j-s0"]
    assert d.status.children.spares == ["j-s0"] and d.status.spares_created == 1
    d2 = step(d.status, running([*d.status.children.pods, "j-s0"]), spec=SPARES)
    assert d2.status.phase == RUNNING and d2.status.spares_ready == 1
    bad = step(None, [], spec={**SPARES, "resilience": {"spareNodes": 1}})
    assert bad.status.phase == "Failed" and "spec.resilience.spareNodes" in bad.status.message
    assert "restartMode InPlace" in bad.status.message
    spare_pod = plan.plan_children(JOB, parse_spec(SPARES).spec, 0, spares=["j-s0"])[-1]
    assert spare_pod["metadata"]["labels"][plan.LABEL_ROLE] == "spare"
    assert plan.LABEL_NODE_RANK not in spare_pod["metadata"]["labels"]
    assert spare_pod["spec"]["hostname"] == "s0"


def test_a_lost_rank_moves_to_the_spare_and_a_new_spare_is_requested():
    d = step(None, [], spec=SPARES)
    names = d.status.children.pods
    all_pods = [*names, "j-s0"]
    d = step(d.status, running(all_pods), spec=SPARES)
    nodes = {"node-0": NodeObservation(name="node-0", exists=False, ready=False)}  # rank 0's node
    d = step(d.status, running(all_pods), nodes=nodes, spec=SPARES)
    assert d.status.attempt == 1 and d.force_delete_pods == [names[0]]
    assert d.status.children.pods == ["j-s0", *names[1:]] and d.status.children.spares == ["j-s1"]
    assert d.create_pods == ["j-s1"]  # the gang's rank 0 is the spare: nothing scheduled on the critical path
    assert d.promoted == ["j-s0"]
    children = plan.plan_children(
        JOB,
        parse_spec(SPARES).spec,
        1,
        members=d.status.children.pods,
        spares=d.status.children.spares,
        promoted=d.promoted,
    )
    announced = gang.GangAnnouncement.from_json(
        next(
            c for c in children if (c["kind"], c["metadata"]["name"]) == ("ConfigMap", plan.gang_config_map_name("j"))
        )["data"][gang.GANG_FILE]
    )
    assert announced.members["j-s0"] == 0 and announced.spares == ["j-s1"] and announced.promoted == ["j-s0"]
    assert announced.master_addr.startswith("s0.j.ns.svc.")  # rank 0's address follows its pod


def test_a_spare_lost_between_failures_is_replaced_without_touching_the_gang():
    d = step(None, [], spec=SPARES)
    names = d.status.children.pods
    d = step(d.status, running([*names, "j-s0"]), spec=SPARES)
    spare_gone = running([*names, "j-s0"], **{"j-s0": {"phase": "Failed"}})
    d = step(d.status, spare_gone, spec=SPARES)
    assert d.status.phase == RUNNING and d.status.attempt == 0
    assert d.delete_pods == ["j-s0"] and d.create_pods == ["j-s1"] and d.status.children.spares == ["j-s1"]
    assert [e.reason for e in d.events] == ["SpareReplaced"]


def test_an_in_place_restart_renders_only_the_pods_it_creates():
    spec = parse_spec({"parallelism": {"nodes": 8, "gpusPerNode": 1}, "resilience": {"restartMode": "InPlace"}}, "j")
    assert spec.spec is not None
    ref = plan.JobRef(name="j", namespace="ns", uid="u")
    members = [plan.pod_name("j", 0, r) for r in range(8)]
    members[3] = plan.pod_name("j", 1, 3)
    full = plan.plan_children(ref, spec.spec, 1, members=members, now="t")
    one = plan.plan_children(ref, spec.spec, 1, members=members, now="t", only_pods={members[3]})
    pods = [c for c in one if c["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == [members[3]]
    assert pods[0] == next(c for c in full if c["metadata"]["name"] == members[3])  # the same pod as a full render
    # the same config, Service and announcement; the gang readers only at the first launch (they stay)
    readers = ("ServiceAccount", "Role", "RoleBinding")
    assert [c for c in one if c["kind"] != "Pod"] == [c for c in full if c["kind"] not in ("Pod", *readers)]
