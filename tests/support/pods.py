"""Pod manifests as the sidecar injector leaves them, for plugin tests at every tier."""

from __future__ import annotations


def sidecar_pod(name: str, namespace: str = "default", *, annotations: dict | None = None,
                labels: dict | None = None, proxy_env: dict | None = None, security: dict | None = None,
                native_sidecar: bool = False, init_containers: tuple = (), injected: bool = True,
                node_name: str = "") -> dict:
    ann = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'} if injected else {}
    ann.update(annotations or {})
    proxy = {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0",
             "args": ["proxy", "sidecar", "--domain", f"{namespace}.svc.cluster.local"],
             "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]}
    if proxy_env:
        proxy["env"] = [{"name": k, "value": v} for k, v in proxy_env.items()]
    if security:
        proxy["securityContext"] = security
    app = {"name": "app", "image": "docker.io/library/nginx:1.27", "ports": [{"containerPort": 8080}]}
    spec: dict = {"containers": [app], "initContainers": [{"name": n, "image": "busybox"} for n in init_containers]}
    if native_sidecar:
        proxy["restartPolicy"] = "Always"
        spec["initContainers"].append(proxy)
    else:
        spec["containers"].append(proxy)
    if node_name:
        spec["nodeName"] = node_name
    if not spec["initContainers"]:
        del spec["initContainers"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": ann, "labels": labels or {}},
            "spec": spec}


def plain_pod(name: str, namespace: str = "default", node_name: str = "") -> dict:
    pod = sidecar_pod(name, namespace, injected=False, node_name=node_name)
    pod["spec"]["containers"] = pod["spec"]["containers"][:1]
    return pod
