"""Pods of the node tier, shaped as the sidecar injector writes them with CNI enabled, and the
checks made from inside them.

The injected pod has the ``istio-validation`` init container (upstream: ``pilot-agent istio-iptables
--run-validation``; here ``istio-cni validate`` from the node image, same contract: exit 126 when
the redirect is missing), the application and ``istio-proxy`` running as uid 1337. The app and
the proxy are tools/images/workload.py: every listener answers with the port that accepted the
connection and its SO_ORIGINAL_DST.
"""

from __future__ import annotations

import json

APP_PORT = 8080
PROXY_UID = 1337


def _restricted(uid: int | None = None) -> dict:
    sc = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    if uid is not None:
        sc.update(runAsUser=uid, runAsGroup=uid, runAsNonRoot=True)
    return sc


def app_container(workload_image: str) -> dict:
    return {"name": "app", "image": workload_image, "imagePullPolicy": "Never",
            "command": ["workload", "app", "--port", str(APP_PORT)],
            "ports": [{"containerPort": APP_PORT, "protocol": "TCP"}]}


def injected_pod(name: str, namespace: str, workload_image: str, node_image: str) -> dict:
    status = {"initContainers": ["istio-validation"], "containers": ["istio-proxy"], "volumes": [],
              "imagePullSecrets": None, "revision": "default"}
    validation = {
        "name": "istio-validation", "image": node_image, "imagePullPolicy": "Never",
        "command": ["istio-cni", "validate"],
        "args": ["--outbound-port", "15001", "--inbound-port", "15006", "--proxy-uid", str(PROXY_UID),
                 "--timeout", "5"],
        "securityContext": {**_restricted(PROXY_UID), "readOnlyRootFilesystem": True},
    }
    proxy = {
        "name": "istio-proxy", "image": workload_image, "imagePullPolicy": "Never",
        "command": ["workload", "proxy", "--ports", "15001,15006,15021"],
        "ports": [{"containerPort": 15021, "name": "http-status", "protocol": "TCP"}],
        # Ready once the proxy listens (it binds 15001 and 15006 before 15021), as Envoy's
        # readiness on 15021 says in a real mesh: "Running" alone only means its process started,
        # and a connection made then can be refused (seen in the two-node scenarios).
        "readinessProbe": {"tcpSocket": {"port": 15021}, "periodSeconds": 1, "failureThreshold": 60},
        "securityContext": {**_restricted(PROXY_UID), "readOnlyRootFilesystem": True},
    }
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"app": name, "security.istio.io/tlsMode": "istio",
                       "service.istio.io/canonical-name": name},
            "annotations": {"sidecar.istio.io/status": json.dumps(status, separators=(",", ":")),
                            "kubectl.kubernetes.io/default-container": "app"},
        },
        "spec": {"initContainers": [validation], "containers": [app_container(workload_image), proxy],
                 "terminationGracePeriodSeconds": 2, "enableServiceLinks": False},
    }


def plain_pod(name: str, namespace: str, workload_image: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"containers": [app_container(workload_image)], "terminationGracePeriodSeconds": 2,
                     "enableServiceLinks": False}}


def answer(text: str) -> dict:
    """The JSON line a workload listener sent back (as printed by ``workload connect``)."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    try:
        return json.loads(line)
    except ValueError:
        return {"error": f"not a workload answer: {text[-300:]!r}"}
