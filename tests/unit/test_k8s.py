"""The plugin's lean pod lookup against the fault-injecting fake API (fast tier)."""

from __future__ import annotations

import json

import pytest

from istio_cni import errors
from istio_cni.config import parse_conf
from istio_cni.k8s import Client, get_pod
from istio_cni.transport import split_server
from istio_cni.kubeconfig import Cluster, load
from peers.fakeapi import Delay, Reset, SlowBody, Status

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "ns1",
       "annotations": {"sidecar.istio.io/status": "{}"}}, "spec": {"containers": [{"name": "app"}]}}


def write_kubeconfig(path, server, token="", ca_file="", insecure=False):
    cluster = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = str(ca_file)
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": cluster}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "users": [{"name": "u", "user": {"token": token} if token else {}}]}
    path.write_text(json.dumps(doc))
    return str(path)


def conf_for(kubeconfig, attempts=3, interval=0.01):
    return parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni",
                       "kubernetes": {"kubeconfig": kubeconfig},
                       "lookup_deadline_seconds": interval * (attempts - 1),
                       "lookup_retry_interval_seconds": interval})


@pytest.fixture
def api_conf(fake_api, tmp_path):
    fake_api.add_pod(POD)
    return conf_for(write_kubeconfig(tmp_path / "kc", fake_api.url))


def test_get_pod(fake_api, api_conf):
    assert get_pod(api_conf, "ns1", "web")["metadata"]["name"] == "web"


def test_500_then_200_retries(fake_api, api_conf):
    path = fake_api.pod_path("ns1", "web")
    fake_api.script(path, 500, 503)
    assert get_pod(api_conf, "ns1", "web")["metadata"]["name"] == "web"
    assert fake_api.hits(path) == 3


def test_404_until_deadline_code_11(fake_api, api_conf):
    with pytest.raises(errors.TryAgainLater) as ei:
        get_pod(api_conf, "ns1", "missing")
    assert ei.value.code == 11 and "404" in ei.value.details and "not found" in ei.value.details
    assert fake_api.hits(fake_api.pod_path("ns1", "missing")) == 3


@pytest.mark.parametrize("code,word", [(403, "RBAC"), (401, "credentials")])
def test_auth_errors_fail_at_once(fake_api, api_conf, code, word):
    path = fake_api.pod_path("ns1", "web")
    fake_api.script(path, code)
    with pytest.raises(errors.KubernetesLookupError) as ei:
        get_pod(api_conf, "ns1", "web")
    assert word in ei.value.msg and fake_api.hits(path) == 1


def test_connection_reset_retries(fake_api, api_conf):
    path = fake_api.pod_path("ns1", "web")
    fake_api.script(path, Reset())
    assert get_pod(api_conf, "ns1", "web")["metadata"]["name"] == "web"


def test_slow_server_times_out_then_deadline(fake_api, tmp_path):
    fake_api.add_pod(POD)
    conf = conf_for(write_kubeconfig(tmp_path / "kc", fake_api.url), attempts=2)
    path = fake_api.pod_path("ns1", "web")
    fake_api.script(path, Delay(3), Delay(3))

    class Fast(Client):
        def get(self, p, timeout=None):
            return super().get(p, timeout=0.3)

    with pytest.raises(errors.TryAgainLater) as ei:
        get_pod(conf, "ns1", "web", client=Fast(load(conf.kubeconfig)))
    assert "timed out" in ei.value.details.lower() or "timeout" in ei.value.details.lower()


def test_slow_body_still_read(fake_api, api_conf):
    fake_api.script(fake_api.pod_path("ns1", "web"), SlowBody(interval=0.01, chunk=256))
    assert get_pod(api_conf, "ns1", "web")["kind"] == "Pod"


def test_429_retries(fake_api, api_conf):
    fake_api.script(fake_api.pod_path("ns1", "web"), Status(429, retry_after=1))
    assert get_pod(api_conf, "ns1", "web")["kind"] == "Pod"


def test_connection_refused_code_11(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = conf_for(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}"), attempts=2)
    with pytest.raises(errors.TryAgainLater) as ei:
        get_pod(conf, "ns1", "web")
    assert "Connection" in ei.value.details


def test_token_sent_and_never_logged(tmp_path, capsys):
    from peers.fakeapi import FakeAPI

    with FakeAPI(token="s3cr3t-token") as api:
        api.add_pod(POD)
        conf = conf_for(write_kubeconfig(tmp_path / "kc", api.url, token="wrong"))
        with pytest.raises(errors.KubernetesLookupError):
            get_pod(conf, "ns1", "web")
        conf = conf_for(write_kubeconfig(tmp_path / "kc2", api.url, token="s3cr3t-token"))
        assert get_pod(conf, "ns1", "web")["kind"] == "Pod"
    assert "s3cr3t" not in capsys.readouterr().err


def test_tls_verified(fake_api_tls, tmp_path):
    fake_api_tls.add_pod(POD)
    good = conf_for(write_kubeconfig(tmp_path / "kc", fake_api_tls.url, ca_file=fake_api_tls.ca_file))
    assert get_pod(good, "ns1", "web")["kind"] == "Pod"
    insecure = conf_for(write_kubeconfig(tmp_path / "kc2", fake_api_tls.url, insecure=True))
    assert get_pod(insecure, "ns1", "web")["kind"] == "Pod"
    # No CA given: the system store does not trust the test CA -> verification fails, retried, code 11.
    untrusted = conf_for(write_kubeconfig(tmp_path / "kc3", fake_api_tls.url), attempts=1)
    with pytest.raises(errors.TryAgainLater) as ei:
        get_pod(untrusted, "ns1", "web")
    assert "CERTIFICATE_VERIFY_FAILED" in ei.value.details


def test_missing_kubeconfig_is_lookup_error(tmp_path):
    conf = conf_for(str(tmp_path / "none"))
    with pytest.raises(errors.KubernetesLookupError) as ei:
        get_pod(conf, "ns1", "web")
    assert "kubeconfig" in ei.value.msg


@pytest.mark.parametrize(
    "server,expected",
    [("https://10.0.0.1", ("https", "10.0.0.1", 443, "")), ("http://h:8080/", ("http", "h", 8080, "")),
     ("https://[::1]:6443/k8s", ("https", "::1", 6443, "/k8s")), ("https://[10.110.0.1]:443", ("https", "10.110.0.1", 443, ""))],
)
def test_split_server(server, expected):
    assert split_server(server) == expected
