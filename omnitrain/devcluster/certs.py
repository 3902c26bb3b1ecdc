"""Cluster PKI with the openssl CLI (present on the machines we target, so no extra Python dependency):
a CA, the API server's serving certificate for 127.0.0.1, an admin client certificate (system:masters),
client certificates for the controller-manager and scheduler, the service-account key pair, and the pair the
API server and the node agent's kubelet endpoint use with each other (`kubectl logs`): the agent's serving
certificate for 127.0.0.1 and the API server's kubelet client certificate (CN KUBELET_CLIENT_USER)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterPKI:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.folder / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.folder / "sa.pub"

    @property
    def kubelet_cert(self) -> Path:
        """The node agent's serving certificate (the address the API server dials for a local node: 127.0.0.1)."""
        return self.folder / "kubelet.crt"

    @property
    def kubelet_key(self) -> Path:
        return self.folder / "kubelet.key"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"


# client name -> (CN = user, O = group)
CLIENTS = {
    "admin": ("omnitrain-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "agent": ("omnitrain-node-agent", "system:masters"),
    # what the API server presents to kubelets (--kubelet-client-certificate); the node agent accepts only this
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ""),
}
KUBELET_CLIENT_USER = CLIENTS["apiserver-kubelet-client"][0]
SERVER_EXT = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _key(path: Path, pkcs1: bool = False) -> None:
    _openssl("genrsa", *(["-traditional"] if pkcs1 else []), "-out", str(path), "2048")


def _self_signed_ca(key: Path, cert: Path, subject: str, *extensions: str) -> None:
    args = [a for ext in extensions for a in ("-addext", ext)]
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-subj", subject, *args, "-days", "3650", "-sha256", "-out", str(cert)
    )


def _sign(pki: ClusterPKI | WebhookPKI, key: Path, cert: Path, subject: str, ext: str) -> None:
    csr = cert.with_suffix(".csr")
    extfile = cert.with_suffix(".ext")
    extfile.write_text(ext)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(pki.ca_cert),
        "-CAkey",
        str(pki.ca_key),
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(extfile),
        "-out",
        str(cert),
    )
    csr.unlink()
    extfile.unlink()


def ensure_pki(folder: Path) -> ClusterPKI:
    """Creates what is missing (a second call reuses everything, so restarts keep the same CA and tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = ClusterPKI(folder)
    if not pki.ca_cert.exists():
        _key(pki.ca_key)
        _self_signed_ca(pki.ca_key, pki.ca_cert, "/CN=omnitrain-dev-ca")
    if not pki.serving_cert.exists():
        _key(pki.serving_key)
        _sign(
            pki,
            pki.serving_key,
            pki.serving_cert,
            "/CN=kube-apiserver",
            SERVER_EXT + "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
        )
    if not pki.kubelet_cert.exists():
        # every local node's address is 127.0.0.1 (one agent serves them all); the API server verifies this name
        _key(pki.kubelet_key)
        _sign(
            pki,
            pki.kubelet_key,
            pki.kubelet_cert,
            "/CN=omnitrain-node-agent",
            SERVER_EXT + "subjectAltName=IP:127.0.0.1\n",
        )
    for name, (user, group) in CLIENTS.items():
        cert, key = pki.client(name)
        if not cert.exists():
            _key(key)
            subject = f"/CN={user}" + (f"/O={group}" if group else "")
            _sign(
                pki,
                key,
                cert,
                subject,
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
            )
    if not pki.sa_key.exists():
        _key(pki.sa_key)
        _openssl("rsa", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    return pki


def kubeconfig_text(server: str, pki: ClusterPKI, client: str) -> str:
    cert, key = pki.client(client)
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: omnitrain-dev\n"
        "clusters:\n- name: omnitrain-dev\n  cluster:\n"
        f"    server: {server}\n    certificate-authority: {pki.ca_cert}\n"
        f"users:\n- name: {client}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n"
        f"contexts:\n- name: omnitrain-dev\n  context:\n    cluster: omnitrain-dev\n    user: {client}\n"
    )


@dataclass(frozen=True)
class WebhookPKI:
    """A CA of its own and a serving certificate for a webhook server on loopback (Kueue's: docs in kueue.py)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def cert(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"


def ensure_webhook_pki(folder: Path, ca_name: str, dns_names: list[str]) -> WebhookPKI:
    """Creates what is missing: a CA whose certificate names `ca_name` (CN and DNS SAN) and a server certificate
    for `dns_names` and 127.0.0.1, keys in PKCS#1 (what cert-controller parses)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = WebhookPKI(folder)
    if not pki.ca_cert.exists():
        _key(pki.ca_key, pkcs1=True)
        _self_signed_ca(
            pki.ca_key,
            pki.ca_cert,
            f"/CN={ca_name}",
            f"subjectAltName=DNS:{ca_name}",
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
        )
    if not pki.cert.exists():
        _key(pki.key, pkcs1=True)
        sans = ",".join([f"DNS:{n}" for n in dns_names] + ["IP:127.0.0.1"])
        _sign(pki, pki.key, pki.cert, f"/CN={dns_names[0]}", SERVER_EXT + f"subjectAltName={sans}\n")
    return pki
