"""Helpers of the chart tests: run the real helm, look rendered objects up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "istio-cni"
RELEASE, NAMESPACE = "istio-cni", "istio-system"
KUBE_VERSION = "v1.32.0"
PLATFORMS = ("gke", "k3s", "microk8s", "openshift")


class StrictLoader(yaml.SafeLoader):
    """Refuses duplicate keys: YAML readers keep the last one silently, the API server does not."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class HelmFailed(AssertionError):
    def __init__(self, argv: list[str], stderr: str) -> None:
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)} failed:\n{stderr}")


class Manifests(list):
    """The rendered objects, with lookups by kind and name."""

    def get(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
        assert len(found) == 1, f"expected one {kind} {name or ''}, rendered: {self.names()}"
        return found[0]

    def all(self, kind: str) -> list[dict]:
        return [o for o in self if o["kind"] == kind]

    def names(self) -> list[str]:
        return [f"{o['kind']}/{o['metadata']['name']}" for o in self]

    @property
    def daemonset(self) -> dict:
        return self.get("DaemonSet", "istio-cni-node")

    @property
    def container(self) -> dict:
        return self.daemonset["spec"]["template"]["spec"]["containers"][0]

    @property
    def config(self) -> dict:
        return self.get("ConfigMap", "istio-cni-config")["data"]


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        # Private config/cache dirs: nothing read from or written to the user's helm setup.
        self.env = {"HOME": str(home), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data"),
                    "PATH": "/usr/bin:/bin"}
        self._n = 0

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.binary), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise HelmFailed(argv, proc.stderr)
        return proc

    def values_args(self, values: dict | None, tmp: Path) -> list[str]:
        if not values:
            return []
        self._n += 1
        f = tmp / f"values-{self._n}.json"  # JSON is YAML; keeps types exact (no --set guessing)
        f.write_text(json.dumps(values))
        return ["--values", str(f)]

    def template(self, values: dict | None = None, *extra: str, tmp: Path,
                 kube_version: str = KUBE_VERSION, namespace: str = NAMESPACE) -> Manifests:
        out = self.run("template", RELEASE, str(CHART), "--namespace", namespace,
                       "--kube-version", kube_version, *self.values_args(values, tmp), *extra).stdout
        return Manifests(d for d in yaml.load_all(out, Loader=StrictLoader) if d)

    def template_error(self, values: dict | None = None, *extra: str, tmp: Path) -> str:
        """Render expecting failure; returns helm's error text."""
        proc = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                        "--kube-version", KUBE_VERSION, *self.values_args(values, tmp), *extra,
                        check=False)
        assert proc.returncode != 0, f"helm accepted {values} {extra}; rendered:\n{proc.stdout[:2000]}"
        return proc.stderr


def chart_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def chart_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())
