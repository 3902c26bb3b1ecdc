"""A real etcd + kube-apiserver for the status/report tests (no scheduler, no controllers: the tests write the
objects and their status themselves). Uses the binaries `make cluster-bins` builds into $OMNITRAIN_CACHE/bin.

The project's local cluster (omnitrain/devcluster) starts the full control plane; these tests only need objects in
an API server, so they start the two processes that store and serve them.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time
import urllib.request
import ssl
from contextlib import contextmanager
from pathlib import Path

from omnitrain.trainer.parallel.testing import free_port

CACHE = Path(os.environ.get("OMNITRAIN_CACHE", Path.home() / ".cache" / "omnitrain"))


def find_binaries() -> Path | None:
    for folder in sorted(glob.glob(str(CACHE / "bin" / "k8s-*")), reverse=True):
        if all(os.access(Path(folder) / b, os.X_OK) for b in ("etcd", "kube-apiserver")):
            return Path(folder)
    return None


def _wait_ready(url: str, token: str, deadline_s: float, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise RuntimeError(f"{log.stem} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling a condition with a deadline, not synchronisation by sleep
    raise TimeoutError(f"API server not ready within {deadline_s} s; logs in {logs}")


@contextmanager
def api_server(workdir: Path):
    """Yields the path of a kubeconfig for a fresh API server; stops both processes afterwards."""
    binaries = find_binaries()
    assert binaries is not None, "no control-plane binaries; run `make cluster-bins`"
    workdir.mkdir(parents=True, exist_ok=True)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    subprocess.run(["openssl", "genrsa", "-out", str(workdir / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(workdir / "sa.key"), "-pubout", "-out", str(workdir / "sa.pub")],
                   check=True, capture_output=True)
    token = "observability-test-token"
    (workdir / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    etcd_log, api_log = workdir / "etcd.log", workdir / "kube-apiserver.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(binaries / "etcd"), "--data-dir", str(workdir / "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}", "--quota-backend-bytes", "268435456"],
            stdout=open(etcd_log, "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [str(binaries / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
             "--bind-address=127.0.0.1", f"--secure-port={api_port}", f"--cert-dir={workdir / 'certs'}",
             f"--token-auth-file={workdir / 'tokens.csv'}", "--authorization-mode=AlwaysAllow",
             f"--service-account-key-file={workdir / 'sa.pub'}",
             f"--service-account-signing-key-file={workdir / 'sa.key'}",
             "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/24",
             # no controller-manager creates the default ServiceAccount, so pods must not need one
             "--disable-admission-plugins=ServiceAccount", "--enable-priority-and-fairness=false"],
            stdout=open(api_log, "w"), stderr=subprocess.STDOUT))
        _wait_ready(f"https://127.0.0.1:{api_port}/readyz", token, 120, procs, [etcd_log, api_log])
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
            f"clusters: [{{name: test, cluster: {{server: 'https://127.0.0.1:{api_port}', "
            f"certificate-authority: '{workdir / 'certs' / 'apiserver.crt'}'}}}}]\n"
            f"users: [{{name: admin, user: {{token: {token}}}}}]\n"
            "contexts: [{name: test, context: {cluster: test, user: admin}}]\n")
        yield kubeconfig
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=5)    # a throw-away server: no need to wait out its graceful shutdown
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
