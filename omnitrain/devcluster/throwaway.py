"""A throw-away control plane for tests and benchmarks: etcd + kube-apiserver + kube-controller-manager (garbage
collector, namespaces), optionally kube-scheduler and kwok, in a folder of its own, stopped on exit. No node agent
and no kubelet: the callers write pod status themselves (as kwok does) or use kwok nodes. The full local cluster
with nodes that run pods is omnitrain.devcluster.cluster.LocalCluster.
Binaries: `make cluster-bins` (omnitrain.devcluster.binaries.bin_dir)."""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from omnitrain.devcluster import kwok as kwok_config
from omnitrain.devcluster.binaries import bin_dir
from omnitrain.devcluster.controlplane import free_port
from omnitrain.devcluster.testing import wait_for

TOKEN = "throwaway-admin-token"
NODE_MONITOR_GRACE = "1h"  # longer than any benchmark run (see the controller-manager's flags below)


def find_binaries() -> Path | None:
    """The binary folder when etcd, kube-apiserver and kube-controller-manager are built; None otherwise."""
    folder = bin_dir()
    ok = all(os.access(folder / b, os.X_OK) for b in ("etcd", "kube-apiserver", "kube-controller-manager"))
    return folder if ok else None


def _api_ready(url: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_ready(url: str, procs, logs) -> None:
    # A process that died ends the wait at once (it is returned), instead of running into the deadline.
    def ready():
        dead = [(proc, log) for proc, log in zip(procs, logs) if proc.poll() is not None]
        return dead or _api_ready(url)

    outcome = wait_for(ready, 120, "kube-apiserver ready")
    if isinstance(outcome, list):
        proc, log = outcome[0]
        raise RuntimeError(f"{log.name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


@contextmanager
def control_plane(workdir: Path, scheduler: bool = False, kwok: bool = False):
    """Yields the kubeconfig path of a fresh control plane; stops it afterwards. With `scheduler`, kube-scheduler
    binds pods; with `kwok`, nodes annotated kwok.x-k8s.io/node=fake run their pods as simulated ones."""
    bins = find_binaries()
    assert bins is not None, "no control-plane binaries; run `make cluster-bins`"
    workdir.mkdir(parents=True, exist_ok=True)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    subprocess.run(["openssl", "genrsa", "-out", str(workdir / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(workdir / "sa.key"), "-pubout", "-out", str(workdir / "sa.pub")],
        check=True,
        capture_output=True,
    )
    (workdir / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
    kubeconfig = workdir / "kubeconfig"
    procs, logs = [], []

    def start(name, argv):
        log = workdir / f"{name}.log"
        logs.append(log)
        procs.append(subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT))

    try:
        start(
            "etcd",
            [
                str(bins / "etcd"),
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                # 8 GiB, etcd's largest recommended, not 256 MiB: a 1,024-node kwok bench (node status, Leases, pod
                # churn) hit "mvcc: database space exceeded" within minutes; the file grows only as far as it is used
                "--quota-backend-bytes",
                str(8 * 1024**3),
                "--unsafe-no-fsync",
            ],
        )
        start(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--etcd-compaction-interval=1m",  # default 5m: old revisions of busy kwok nodes pile up in between
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={workdir / 'certs'}",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                "--authorization-mode=AlwaysAllow",
                f"--service-account-key-file={workdir / 'sa.pub'}",
                f"--service-account-signing-key-file={workdir / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
            ],
        )
        _wait_ready(f"https://127.0.0.1:{api_port}/readyz", procs, logs)
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
            f"clusters: [{{name: e2e, cluster: {{server: 'https://127.0.0.1:{api_port}', "
            f"certificate-authority: '{workdir / 'certs' / 'apiserver.crt'}'}}}}]\n"
            f"users: [{{name: admin, user: {{token: {TOKEN}}}}}]\n"
            "contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]\n"
        )
        # The garbage collector deletes a job's children through their ownerReferences.
        start(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                # nodelifecycle lifts the not-ready taint the API server puts on new (kwok) nodes once they are Ready
                "--controllers=garbagecollector,namespace" + (",nodelifecycle" if kwok else ""),
                # One kwok process renews every fake node's Lease on a machine the benchmark loads fully: a renewal
                # late by a few seconds there is the bench's artefact, not a lost machine, and a flap in the middle
                # of a measurement restarts the job it measures. Nothing on this throwaway plane detects node loss
                # by heartbeat (faults are injected by deleting Pods or Nodes), so the grace outlasts any run.
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
                f"--node-startup-grace-period={NODE_MONITOR_GRACE}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--concurrent-gc-syncs=5",
            ],
        )
        if scheduler:
            config = workdir / "scheduler.yaml"
            config.write_text(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
                f"clientConnection: {{kubeconfig: '{kubeconfig}', qps: 2000, burst: 4000}}\n"
                "leaderElection: {leaderElect: false}\n"
            )
            start(
                "kube-scheduler",
                [
                    str(bins / "kube-scheduler"),
                    f"--config={config}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                ],
            )
        if kwok:
            start(
                "kwok",
                [
                    str(bins / "kwok"),
                    f"--kubeconfig={kubeconfig}",
                    f"--config={kwok_config.write_config(workdir, pod_stages=False)}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    *kwok_config.NODE_LEASE_ARGS,  # without it kwok heartbeats no node (kwok.py says why)
                    "--cidr=10.0.0.1/16",
                    f"--server-address=127.0.0.1:{free_port()}",
                ],
            )
        yield kubeconfig
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=5)  # throw-away: no need to wait out a graceful shutdown
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
