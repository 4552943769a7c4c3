"""The plugin's lean pod lookup against the fault-injecting fake API (fast tier)."""

from __future__ import annotations

import json

import pytest
from peers.fakeapi import Delay, Reset, SlowBody, Status

from istio_cni import errors
from istio_cni.config import parse_conf
from istio_cni.k8s import Client, get_pod
from istio_cni.kubeconfig import Cluster, load
from istio_cni.transport import split_server

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


def test_missing_kubeconfig_is_a_clear_cni_error(tmp_path):
    # A missing or unusable kubeconfig is a configuration error (code 7) naming the file.
    conf = conf_for(str(tmp_path / "none"))
    with pytest.raises(errors.CNIError) as ei:
        get_pod(conf, "ns1", "web")
    assert ei.value.code == 7 and "kubeconfig" in str(ei.value)


@pytest.mark.parametrize(
    "server,expected",
    [("https://10.0.0.1", ("https", "10.0.0.1", 443, "")), ("http://h:8080/", ("http", "h", 8080, "")),
     ("https://[::1]:6443/k8s", ("https", "::1", 6443, "/k8s")),
     ("https://[10.110.0.1]:443", ("https", "10.110.0.1", 443, ""))],
)
def test_split_server(server, expected):
    assert split_server(server) == expected


# ---- issue 13, item 5: names validated before any request, failures retried to code 11 ----

@pytest.mark.parametrize("name", [
    "../web", "..", ".", "a/../../secrets", "web pod", "web\r\nX-Injected: 1", "Web", "web_1", "-web",
    "web-", "web..x", "", "a" * 254, "wéb", "web\x00", "web%2F..",
])
def test_bad_pod_names_are_code_7_before_any_request(fake_api, api_conf, name):
    with pytest.raises(errors.InvalidNetworkConfig) as ei:
        get_pod(api_conf, "ns1", name)
    assert ei.value.code == 7 and "K8S_POD_NAME" in ei.value.msg
    assert fake_api.requests == []


@pytest.mark.parametrize("namespace", ["../kube-system", "ns 1", "ns1\r\n", "NS1", "a.b", "a" * 64, "", "-x"])
def test_bad_namespaces_are_code_7_before_any_request(fake_api, api_conf, namespace):
    with pytest.raises(errors.InvalidNetworkConfig) as ei:
        get_pod(api_conf, namespace, "web")
    assert ei.value.code == 7 and "K8S_POD_NAMESPACE" in ei.value.msg
    assert fake_api.requests == []


@pytest.mark.parametrize("name", ["web", "web-0", "a" * 253, "web.v1.x-y", "0"])
def test_valid_names_reach_the_api(fake_api, tmp_path, name):
    fake_api.add_pod(dict(POD, metadata={"name": name, "namespace": "n" * 63}))
    conf = conf_for(write_kubeconfig(tmp_path / "kc", fake_api.url))
    assert get_pod(conf, "n" * 63, name)["metadata"]["name"] == name


def raw_api(tmp_path, server, attempts=2):
    return conf_for(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{server.port}"), attempts=attempts)


@pytest.mark.parametrize("raw,cause", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n{}", "larger than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", "end of chunk"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "JSON list, not a pod"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\xff{}", "ValueError"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"[" * 100000, "Error"),
    (b"garbage\r\n\r\n", "malformed status line"),
])
def test_malformed_answers_retry_then_code_11_with_cause(tmp_path, raw, cause):
    from support.rawhttp import Answer, RawServer

    with RawServer() as server:
        answers = [server.script(Answer([raw], read_request=True)) for _ in range(2)]
        with pytest.raises(errors.TryAgainLater) as ei:
            get_pod(raw_api(tmp_path, server), "ns1", "web")
    assert ei.value.code == 11 and cause in ei.value.details and "after 2 attempts" in ei.value.msg
    assert all(a.request for a in answers)  # both attempts were made


def test_request_line_and_host_header(tmp_path, monkeypatch):
    """IPv6 API hosts are bracketed in Host (issue 13); the path is the escaped pod path."""
    from support.rawhttp import Answer, RawServer

    from istio_cni import transport

    with RawServer() as server:
        real_connect = transport.connect
        # The client believes it talks to [fd00::10]:6443; the bytes go to our 127.0.0.1 server.
        monkeypatch.setattr(transport, "connect", lambda host, port, deadline: real_connect(
            "127.0.0.1", server.port, deadline))
        body = json.dumps(POD).encode()
        answer = server.script(Answer([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)],
                                      read_request=True))
        conf = conf_for(write_kubeconfig(tmp_path / "kc", "http://[fd00::10]:6443/prefix", token="t0k"))
        assert get_pod(conf, "ns1", "web")["kind"] == "Pod"
    lines = answer.request.split(b"\r\n")
    assert lines[0] == b"GET /prefix/api/v1/namespaces/ns1/pods/web HTTP/1.1"
    assert b"Host: [fd00::10]:6443" in lines


def test_tls_handshake_bounded_by_the_attempt_deadline(tmp_path):
    """A server that accepts TCP and never speaks TLS: the attempt ends at its deadline."""
    import time

    from support.rawhttp import Answer, RawServer

    with RawServer() as server:
        server.script(Answer([b"", b""], gap=5))
        cluster = Cluster(server=f"https://127.0.0.1:{server.port}", ca_file="", ca_data="", insecure=True,
                          token="", token_file="", client_cert_file="", client_cert_data="",
                          client_key_file="", client_key_data="", namespace="")
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            Client(cluster, timeout=0.3).get("/api/v1/namespaces/ns1/pods/web")
        assert time.monotonic() - start < 5.5  # a bound against hanging, not a benchmark


@pytest.mark.parametrize("server_url", ["https://127.0.0.1:99999", "https://127.0.0.1:x", "https://h\tx:443"])
def test_unusable_server_url_is_a_clear_cni_error(tmp_path, server_url):
    conf = conf_for(write_kubeconfig(tmp_path / "kc", server_url))
    with pytest.raises(errors.CNIError) as ei:
        get_pod(conf, "ns1", "web")
    assert ei.value.code not in (11, 999)


@pytest.mark.parametrize("token", ["abc\r\nX-Evil: 1", "abc\x00", "tökén"])
def test_token_that_cannot_travel_in_a_header_is_refused_unquoted(tmp_path, token):
    from istio_cni.k8s import bearer_token

    tf = tmp_path / "token"
    tf.write_bytes(token.encode("utf-8"))
    for cluster in (Cluster(server="https://h", ca_file="", ca_data="", insecure=False, token=token,
                            token_file="", client_cert_file="", client_cert_data="", client_key_file="",
                            client_key_data="", namespace=""),
                    Cluster(server="https://h", ca_file="", ca_data="", insecure=False, token="",
                            token_file=str(tf), client_cert_file="", client_cert_data="", client_key_file="",
                            client_key_data="", namespace="")):
        with pytest.raises(errors.KubernetesLookupError) as ei:
            bearer_token(cluster)
        assert "abc" not in str(ei.value) and "t\u00f6" not in str(ei.value)


def test_lookup_stops_at_its_deadline(fake_api, tmp_path):
    """30 attempts of 0.3 s each would take 9 s; the lookup deadline (retry budget + one
    attempt) ends it after the attempts that fit."""
    fake_api.add_pod(POD)
    conf = conf_for(write_kubeconfig(tmp_path / "kc", fake_api.url), attempts=30, interval=0.01)
    path = fake_api.pod_path("ns1", "web")
    fake_api.script(path, *[Delay(3)] * 30)
    with pytest.raises(errors.TryAgainLater) as ei:
        get_pod(conf, "ns1", "web", client=Client(load(conf.kubeconfig), timeout=0.3))
    assert fake_api.hits(path) < 30 and "timed out" in ei.value.details


def test_token_file_token_is_registered_as_a_secret(tmp_path):
    from istio_cni.k8s import bearer_token

    tf = tmp_path / "token"
    tf.write_text("file-token-3f9a8b7c\n")
    cluster = Cluster(server="https://h", ca_file="", ca_data="", insecure=False, token="", token_file=str(tf),
                      client_cert_file="", client_cert_data="", client_key_file="", client_key_data="",
                      namespace="")
    assert bearer_token(cluster) == "file-token-3f9a8b7c"
    err = errors.TryAgainLater("x", "the API echoed file-token-3f9a8b7c back").to_dict("1.0.0")
    assert "file-token-3f9a8b7c" not in json.dumps(err)
