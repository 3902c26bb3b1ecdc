"""The rendezvous address a supervisor gives torchrun: a name the resolver knows stays a name; on a cluster without
pod DNS (the local agent) the agent's hosts file gives the IP."""

from omnitrain import gang
from omnitrain.devcluster import podspec


def test_a_name_the_resolver_knows_stays_a_name(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.9 localhost\n")
    assert gang.resolve_address("localhost", str(hosts)) == "localhost"
    assert gang.resolve_address("n0.j.ns.svc.cluster.local", None) == "n0.j.ns.svc.cluster.local"


def test_an_unknown_name_comes_from_the_hosts_file_and_waits_for_it(tmp_path):
    hosts = tmp_path / "hosts"
    name = "n0.job-x.ns-unresolvable.svc.cluster.local"
    ticks = iter(range(100))

    def clock():  # each look at the clock is one poll later; the entry appears on the third
        t = next(ticks)
        if t == 2:
            hosts.write_text(f"127.0.0.7 {name} n0.job-x.ns-unresolvable.svc\n")
        return float(t)

    assert gang.resolve_address(name, str(hosts), wait_seconds=10, poll_seconds=0, clock=clock) == "127.0.0.7"
    # never listed: the name itself once the wait is over (torchrun then names what it could not resolve)
    other = "n1.job-x.ns-unresolvable.svc.cluster.local"
    assert gang.resolve_address(other, str(hosts), wait_seconds=0, poll_seconds=0) == other


def test_the_agent_lists_pods_under_a_headless_service_by_their_dns_names():
    def pod(name, host=None, sub=None, deleted=False):
        meta = {"name": name, "namespace": "ns", **({"deletionTimestamp": "t"} if deleted else {})}
        return {"metadata": meta, "spec": {k: v for k, v in (("hostname", host), ("subdomain", sub)) if v}}

    lines = podspec.hosts_lines(
        [(pod("a", "n0", "j"), "127.0.0.5"), (pod("b"), "127.0.0.6"), (pod("c", "s0", "j", deleted=True), "127.0.0.8")]
    )
    assert lines == ["127.0.0.5 n0.j.ns.svc.cluster.local n0.j.ns.svc"]
