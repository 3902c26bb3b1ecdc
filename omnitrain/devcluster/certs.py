"""Cluster PKI with the openssl CLI (present on the machines we target, so no extra Python dependency):
a CA, the API server's serving certificate for 127.0.0.1, an admin client certificate (system:masters),
client certificates for the controller-manager and scheduler, and the service-account key pair."""

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

    def client(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"


# client name -> (CN = user, O = group)
CLIENTS = {
    "admin": ("omnitrain-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "agent": ("omnitrain-node-agent", "system:masters"),
}


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl("genrsa", "-out", str(path), "2048")


def _sign(pki: ClusterPKI, key: Path, cert: Path, subject: str, ext: str) -> None:
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
        _openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            str(pki.ca_key),
            "-subj",
            "/CN=omnitrain-dev-ca",
            "-days",
            "3650",
            "-sha256",
            "-out",
            str(pki.ca_cert),
        )
    if not pki.serving_cert.exists():
        _key(pki.serving_key)
        _sign(
            pki,
            pki.serving_key,
            pki.serving_cert,
            "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
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
