"""Throw-away PKI for the test peers, made with the openssl CLI (Debian's openssl package).

One CA per call to ``make_ca``; serving certificates for 127.0.0.1/localhost signed by it; an RSA
key pair for service-account token signing. Everything lands in a directory the caller owns.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

OPENSSL = "/usr/bin/openssl"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")


class CA:
    """A CA in ``directory`` (ca.crt / ca.key) that signs leaf certificates."""

    def __init__(self, directory: Path, name: str = "istio-cni-test-ca") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
                 "-subj", f"/CN={name}", "-keyout", str(self.key), "-out", str(self.cert),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def issue(self, name: str, cn: str, *, sans: tuple[str, ...] = (), client: bool = False,
              org: str | None = None) -> tuple[Path, Path]:
        """Sign a leaf certificate; returns (cert, key). ``sans`` like ("IP:127.0.0.1", "DNS:localhost")."""
        cert, key, csr, ext = (self.dir / f"{name}{s}" for s in (".crt", ".key", ".csr", ".ext"))
        subj = f"/CN={cn}" + (f"/O={org}" if org else "")
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subj,
                 "-keyout", str(key), "-out", str(csr), cwd=self.dir)
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert),
                 cwd=self.dir)
        return cert, key


LOOPBACK_SANS = ("IP:127.0.0.1", "DNS:localhost")


def make_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """RSA private key + its public key in PEM (for service-account token signing)."""
    directory = Path(directory)
    key, pub = directory / f"{name}.key", directory / f"{name}.pub"
    _openssl("genrsa", "-out", str(key), "2048", cwd=directory)
    _openssl("rsa", "-in", str(key), "-pubout", "-out", str(pub), cwd=directory)
    return key, pub
