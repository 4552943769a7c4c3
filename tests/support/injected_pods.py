"""Realistic pod objects as the API returns them (shape of a sidecar-injected pod)."""

from __future__ import annotations

import copy
import json
import uuid

NODE = "node-a"

_STATUS = json.dumps({"initContainers": ["istio-validation"], "containers": ["istio-proxy"],
                      "volumes": ["istio-envoy", "istio-data", "istio-podinfo", "istio-token",
                                  "istiod-ca-cert"], "imagePullSecrets": None, "revision": "default"})


def injected_pod(name: str, namespace: str = "default", node: str = NODE, ip: str = "",
                 annotations: dict | None = None, uid: str | None = None) -> dict:
    """A pod the sidecar injector has processed (CNI mode: istio-validation, not istio-init)."""
    ann = {"sidecar.istio.io/status": _STATUS, "kubectl.kubernetes.io/default-container": "app",
           "prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020",
           "prometheus.io/scrape": "true", "istio.io/rev": "default"}
    ann.update(annotations or {})
    proxy_env = [{"name": n, "value": v} for n, v in (
        ("PILOT_CERT_PROVIDER", "istiod"), ("CA_ADDR", "istiod.istio-system.svc:15012"),
        ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"), ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("TRUST_DOMAIN", "cluster.local"), ("ISTIO_META_WORKLOAD_NAME", name),
        ("ISTIO_META_MESH_ID", "cluster.local"), ("PROXY_CONFIG", "{}"),
        ("ISTIO_META_APP_CONTAINERS", "app"))]
    pod = {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
            "resourceVersion": "1", "creationTimestamp": "2026-11-26T14:00:00Z",
            "labels": {"app": name.rsplit("-", 1)[0], "security.istio.io/tlsMode": "istio",
                       "service.istio.io/canonical-name": name, "service.istio.io/canonical-revision": "v1"},
            "annotations": ann,
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-26T14:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in "abcdefgh"}},
                                            "f:spec": {"f:containers": {
                                                f'k:{{"name":"c{i}"}}': {} for i in range(6)}}}}],
        },
        "spec": {
            "nodeName": node, "restartPolicy": "Always", "serviceAccountName": "default",
            "initContainers": [{
                "name": "istio-validation", "image": "docker.io/istio/proxyv2:1.24.0",
                "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                         "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info",
                         "--run-validation", "--skip-rule-apply"],
                "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]}}}],
            "containers": [
                {"name": "app", "image": "docker.io/library/nginx:1.27", "ports": [{"containerPort": 8080}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0",
                 "args": ["proxy", "sidecar", "--domain", f"{namespace}.svc.cluster.local",
                          "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error",
                          "--log_output_level=default:info"],
                 "env": proxy_env,
                 "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True}}],
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }
    if ip:
        pod["status"].update(podIP=ip, podIPs=[{"ip": ip}])
    return pod


def uninjected_pod(name: str, namespace: str = "default", node: str = NODE) -> dict:
    pod = injected_pod(name, namespace, node)
    del pod["metadata"]["annotations"]["sidecar.istio.io/status"]
    pod["spec"]["initContainers"] = []
    pod["spec"]["containers"] = pod["spec"]["containers"][:1]
    return pod


def validation_failed(pod: dict, exit_code: int = 126, restarted: bool = True) -> dict:
    """The pod after istio-validation exited ``exit_code`` (and, if ``restarted``, runs again)."""
    pod = copy.deepcopy(pod)
    term = {"exitCode": exit_code, "reason": "Error", "message": "iptables validation failed"}
    st = {"name": "istio-validation", "ready": False, "restartCount": 1 if restarted else 0,
          "image": "docker.io/istio/proxyv2:1.24.0", "started": False,
          "imageID": "docker.io/istio/proxyv2@sha256:" + "ab" * 32, "containerID": "containerd://" + "cd" * 32}
    if restarted:
        st.update(state={"running": {"startedAt": "2026-11-26T14:00:10Z"}}, lastState={"terminated": term})
    else:
        st.update(state={"terminated": term}, lastState={})
    pod["status"]["initContainerStatuses"] = [st]
    return pod
