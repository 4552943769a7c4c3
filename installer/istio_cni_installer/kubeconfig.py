"""The plugin's kubeconfig: service-account token + CA, written 0600 into the private run dir.

The token is projected by kubelet and rotated through an atomic ``..data`` symlink swap in the
service-account directory; the installer watches that directory and calls ``ensure`` again,
which rewrites the file only when its content would change. The token is never logged.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from istio_cni.log import log

from .atomic import remove_atomic, write_atomic

if TYPE_CHECKING:
    from .settings import Settings


class KubeconfigWriteError(RuntimeError):
    """The plugin's kubeconfig cannot be written (no CA, empty token, no API host). Not the
    plugin's ``istio_cni.kubeconfig.KubeconfigError``, which is a code-7 error on reading it."""


def server_url(protocol: str, host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal, as Go's net.JoinHostPort does
    return f"{protocol}://{host}:{port}"


def render(server: str, token: str, ca_pem: bytes | None, skip_tls_verify: bool) -> str:
    """The document upstream writes (same keys, same order), serialised as JSON.

    Upstream marshals it as YAML. kubectl and client-go read JSON as well (it is YAML), and the
    plugin reads a JSON kubeconfig on its fast path with the standard library's C JSON engine,
    while a YAML one costs every ADD the PyYAML import (~45 ms measured, benchmarks/RESULTS.md).
    """
    if skip_tls_verify:
        tls: dict[str, object] = {"insecure-skip-tls-verify": True}
    elif ca_pem:
        tls = {"certificate-authority-data": base64.b64encode(ca_pem).decode()}
    else:
        raise KubeconfigWriteError("no CA certificate and SKIP_TLS_VERIFY is false")
    doc = {
        "apiVersion": "v1",
        "clusters": [{"cluster": {**tls, "server": server}, "name": "local"}],
        "contexts": [{"context": {"cluster": "local", "user": "istio-cni"}, "name": "istio-cni-context"}],
        "current-context": "istio-cni-context",
        "kind": "Config",
        "users": [{"name": "istio-cni", "user": {"token": token}}],
    }
    return json.dumps(doc, indent=2) + "\n"


class Kubeconfig:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.path = Path(settings.run_dir) / settings.kubecfg_file_name
        self.sa_dir = Path(settings.service_account_dir)

    def _desired(self) -> str | None:
        token_file = self.sa_dir / "token"
        try:
            token = token_file.read_text().strip()
        except FileNotFoundError:
            return None
        if not token:
            raise KubeconfigWriteError(f"{token_file} is empty")
        if not self.s.k8s_service_host:
            raise KubeconfigWriteError(
                "KUBERNETES_SERVICE_HOST is not set but a service-account "
                "token exists: cannot tell the plugin where the API server is"
            )
        ca = None
        if not self.s.skip_tls_verify:
            ca_file = Path(self.s.kube_ca_file or self.sa_dir / "ca.crt")
            try:
                ca = ca_file.read_bytes()
            except OSError as e:
                raise KubeconfigWriteError(f"KUBE_CA_FILE {ca_file}: {e.strerror}") from None
        url = server_url(self.s.k8s_service_protocol, self.s.k8s_service_host, self.s.k8s_service_port)
        return render(url, token, ca, self.s.skip_tls_verify)

    def check(self) -> list[str]:
        return self._problems(self._desired())

    def _problems(self, want: str | None) -> list[str]:
        if want is None:
            return []
        try:
            st = os.stat(self.path)
            have = self.path.read_text()
        except FileNotFoundError:
            return [f"kubeconfig {self.path} missing"]
        problems = []
        if have != want:
            problems.append(f"kubeconfig {self.path} is stale (token or server changed)")
        if st.st_mode & 0o777 != self.s.kubeconfig_mode:
            problems.append(f"kubeconfig {self.path} has mode {st.st_mode & 0o777:o}")
        return problems

    def ensure(self) -> bool:
        """Write the kubeconfig if it is missing or stale; True when written."""
        want = self._desired()
        if want is None:
            if not getattr(self, "_warned", False):
                log.warning("no service-account token: plugin kubeconfig not written", token_dir=str(self.sa_dir))
                self._warned = True
            return False
        if not self._problems(want):  # the token and CA were just read: not again
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, want, self.s.kubeconfig_mode)
        # Only the location and a fingerprint-free summary are logged: never the token.
        log.info("plugin kubeconfig written", path=str(self.path), server=self.s.k8s_service_host)
        return True

    def remove(self) -> bool:
        return remove_atomic(self.path)
