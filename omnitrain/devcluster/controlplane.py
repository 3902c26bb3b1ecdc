"""The control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, each a detached
process with its log, pid file and flags under the cluster folder. Ports are chosen free at first start and kept
in state.json so a restart (or `dev status` from another shell) finds the same cluster."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from omnitrain.devcluster import procs
from omnitrain.devcluster.certs import ClusterPKI, ensure_pki, kubeconfig_text

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.96.0.0/24"
# Controllers that need a cloud provider; everything else (garbage collector, job, node lifecycle, pod GC, ...) runs.
CLOUD_CONTROLLERS = ("-service-lb-controller", "-node-route-controller", "-cloud-node-lifecycle-controller")
# Controllers that cannot work here: local pods have loopback IPs (127.a.b.c, one per pod), which the API refuses
# in Endpoints and EndpointSlices ("may not be in the loopback range"), so they would retry and post a Warning
# event for every Service forever. Nothing local reads them: there is no service proxy or cluster DNS, and the node
# agent resolves pod DNS names from the pods themselves (podspec.dns_target_ip).
LOOPBACK_CONTROLLERS = ("-endpoints-controller", "-endpointslice-controller")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


class ControlPlane:
    def __init__(self, root: Path, bin_dir: Path):
        self.root = root
        self.bin_dir = bin_dir
        self.pki: ClusterPKI = ClusterPKI(root / "pki")
        self.logs = root / "logs"
        self.pids = root / "pids"

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def ports(self) -> Ports:
        if self.state_path.exists():
            return Ports(**json.loads(self.state_path.read_text())["ports"])
        ports = Ports.pick()
        self.state_path.write_text(json.dumps({"ports": asdict(ports)}))
        return ports

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports().apiserver}"

    def kubeconfig(self, client: str = "admin") -> Path:
        return self.root / ("kubeconfig" if client == "admin" else f"{client}.kubeconfig")

    def pid_file(self, component: str) -> Path:
        return self.pids / f"{component}.pid"

    def running(self) -> dict[str, bool]:
        return {c: procs.running(self.pid_file(c)) for c in COMPONENTS}

    # -- start / stop ----------------------------------------------------------------------------------------
    def start(self, log: Callable[[str], None] = print, timeout_s: float = 90.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(exist_ok=True)
        ensure_pki(self.root / "pki")
        ports = self.ports()
        for client in ("admin", "controller-manager", "scheduler", "agent"):
            self.kubeconfig(client).write_text(kubeconfig_text(self.server, self.pki, client))
        started = time.monotonic()
        self._start("etcd", self._etcd_argv(ports), log)
        self._start("kube-apiserver", self._apiserver_argv(ports), log)
        self.wait_healthy("kube-apiserver", f"{self.server}/readyz", timeout_s, log, started)
        self._start("kube-controller-manager", self._controller_manager_argv(ports), log)
        self._start("kube-scheduler", self._scheduler_argv(ports), log)
        self.wait_healthy(
            "kube-controller-manager", f"https://127.0.0.1:{ports.controller_manager}/healthz", timeout_s, log, started
        )
        self.wait_healthy("kube-scheduler", f"https://127.0.0.1:{ports.scheduler}/healthz", timeout_s, log, started)

    def stop(self, log: Callable[[str], None] = print) -> None:
        for component in reversed(COMPONENTS):
            if procs.stop(self.pid_file(component), grace_s=15):
                log(f"[dev] stopped {component}")

    def _start(self, component: str, argv: list[str], log: Callable[[str], None]) -> None:
        if procs.running(self.pid_file(component)):
            log(f"[dev] {component} already running")
            return
        pid = procs.spawn_detached(argv, self.logs / f"{component}.log", self.pid_file(component))
        log(f"[dev] started {component} (pid {pid}, log {self.logs / f'{component}.log'})")

    # -- health ----------------------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        cert, key = self.pki.client("admin")
        context.load_cert_chain(str(cert), str(key))
        return context

    def probe(self, url: str) -> tuple[bool, str]:
        """(healthy, body or error) for a /readyz or /healthz URL."""
        context = self._ssl_context()
        if "127.0.0.1:" in url and not url.startswith(self.server):
            context.check_hostname = False  # controller-manager/scheduler serve self-signed certificates
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200, response.read().decode(errors="replace")[:200]
        except OSError as exc:
            return False, str(exc)

    def wait_healthy(
        self, component: str, url: str, timeout_s: float, log: Callable[[str], None], started: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        last_report = time.monotonic()
        while True:
            ok, detail = self.probe(url)
            if ok:
                log(f"[dev] {component} healthy after {time.monotonic() - started:.1f} s")
                return
            if not procs.running(self.pid_file(component)):
                raise RuntimeError(f"{component} exited during start; last log lines:\n{self.log_tail(component)}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{component} not healthy within {timeout_s:.0f} s ({detail}); "
                    f"log: {self.logs / (component + '.log')}\n{self.log_tail(component)}"
                )
            if time.monotonic() - last_report > 5:
                log(f"[dev] waiting for {component} ({detail[:80]})")
                last_report = time.monotonic()
            time.sleep(0.1)  # polling /readyz with a deadline

    def log_tail(self, component: str, lines: int = 20) -> str:
        path = self.logs / f"{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    # -- flags -----------------------------------------------------------------------------------------------
    def _etcd_argv(self, p: Ports) -> list[str]:
        return [
            str(self.bin_dir / "etcd"),
            "--name",
            "omnitrain-dev",
            "--data-dir",
            str(self.root / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{p.etcd_client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{p.etcd_client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{p.etcd_peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{p.etcd_peer}",
            "--initial-cluster",
            f"omnitrain-dev=http://127.0.0.1:{p.etcd_peer}",
            "--listen-metrics-urls",
            "",
            "--quota-backend-bytes",
            str(2 * 1024**3),
            # a dev cluster on a shared disk: fewer fsyncs matter more than durability across power loss
            "--unsafe-no-fsync",
        ]

    def _apiserver_argv(self, p: Ports) -> list[str]:
        pki = self.pki
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{p.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={p.apiserver}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # `kubectl logs`: dial local nodes at 127.0.0.1 (their Hostname resolves nowhere), check the agent's
            # serving certificate, present the client certificate the agent accepts (kubelet.py)
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            f"--kubelet-client-certificate={pki.client('apiserver-kubelet-client')[0]}",
            f"--kubelet-client-key={pki.client('apiserver-kubelet-client')[1]}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _controller_manager_argv(self, p: Ports) -> list[str]:
        kc = str(self.kubeconfig("controller-manager"))
        return [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p.controller_manager}",
            f"--cert-dir={self.root / 'controller-manager-certs'}",
            f"--controllers=*,{','.join(CLOUD_CONTROLLERS + LOOPBACK_CONTROLLERS)}",
            "--leader-elect=false",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--node-monitor-period=2s",
            "--profiling=false",
        ]

    def _scheduler_argv(self, p: Ports) -> list[str]:
        kc = str(self.kubeconfig("scheduler"))
        return [
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p.scheduler}",
            f"--cert-dir={self.root / 'scheduler-certs'}",
            "--leader-elect=false",
            "--profiling=false",
        ]
