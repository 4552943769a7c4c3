"""Work done while the API server answers (k8s.Client's ``idle``, plugin.ImportAhead): it runs
only while the answer is not there, and the answer read afterwards is byte for byte the same."""

from __future__ import annotations

import sys
import time

import pytest
from hypothesis import given, settings, strategies as st
from peers.fakeapi import Delay, SlowBody
from test_k8s import POD, conf_for, write_kubeconfig

from istio_cni import plugin, transport
from istio_cni.k8s import Client, get_pod
from istio_cni.kubeconfig import load


class Recorder:
    """An ``idle`` that notes what ``ready()`` said, waiting up to ``wait`` for the answer."""

    def __init__(self, wait: float = 0.0) -> None:
        self.wait = wait
        self.calls: list[list[bool]] = []

    def __call__(self, ready):
        seen = [ready()]
        end = time.monotonic() + self.wait
        while not seen[-1] and time.monotonic() < end:
            time.sleep(0.01)
            seen.append(ready())
        self.calls.append(seen)


@pytest.mark.parametrize("tls", [True, False])
def test_idle_runs_in_the_handshake_and_the_request_wait(fake_api, fake_api_tls, tmp_path, tls):
    api = fake_api_tls if tls else fake_api
    api.add_pod(POD)
    api.script(api.pod_path("ns1", "web"), Delay(0.3))  # the server "works" 0.3 s on the GET
    kc = write_kubeconfig(tmp_path / "kc", api.url, ca_file=api.ca_file if tls else "")
    idle = Recorder(wait=2.0)
    pod = get_pod(conf_for(kc), "ns1", "web", client=Client(load(kc), idle=idle))
    assert pod == api.pods[("ns1", "web")]
    waits = idle.calls
    assert len(waits) == (2 if tls else 1)  # plain HTTP has no handshake to overlap
    request_wait = waits[-1]
    assert request_wait[0] is False  # the server was still working when idle started...
    assert request_wait[-1] is True  # ...and ready() saw the answer arrive


def test_the_answer_read_ahead_is_delivered_intact(fake_api_tls, tmp_path):
    # A body sent in small pieces: ready() reads ahead what is there, recv() hands it out first.
    fake_api_tls.add_pod(POD)
    fake_api_tls.script(fake_api_tls.pod_path("ns1", "web"), SlowBody(0.02, chunk=7))
    kc = write_kubeconfig(tmp_path / "kc", fake_api_tls.url, ca_file=fake_api_tls.ca_file)
    plain = get_pod(conf_for(kc), "ns1", "web", client=Client(load(kc)))
    fake_api_tls.script(fake_api_tls.pod_path("ns1", "web"), SlowBody(0.02, chunk=7))
    ahead = get_pod(conf_for(kc), "ns1", "web", client=Client(load(kc), idle=Recorder(wait=2.0)))
    assert ahead == plain


class _Chunks:
    """A stand-in for the ``_ssl`` object: hands out ``data`` in the given read sizes, then EOF."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes = data, sizes

    def read(self, n: int) -> bytes:
        k = min(n, self.sizes.pop(0) if self.sizes else n)
        out, self.data = self.data[:k], self.data[k:]
        return out


class _Raw:
    def gettimeout(self):
        return 1.0

    def settimeout(self, t):
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), sizes=st.lists(st.integers(1, 80), max_size=12),
       asks=st.lists(st.integers(1, 120), min_size=1, max_size=40), ready_first=st.booleans())
def test_recv_after_ready_returns_the_same_bytes(data, sizes, asks, ready_first):
    conn = object.__new__(transport.TLSConn)
    conn.raw, conn.tls, conn._ahead = _Raw(), _Chunks(data, list(sizes)), None
    if ready_first:
        assert conn.ready() is True  # data or EOF: something to read
        assert conn.ready() is True  # asking twice reads nothing more
    got = b""
    for n in asks:
        piece = conn.recv(n)
        assert len(piece) <= n
        got += piece
    rest = b"".join(iter(lambda: conn.recv(64), b""))
    assert got + rest == data


def test_an_error_met_while_reading_ahead_is_raised_by_recv():
    class Broken:
        def read(self, n):
            raise ConnectionResetError(104, "reset")

    conn = object.__new__(transport.TLSConn)
    conn.raw, conn.tls, conn._ahead = _Raw(), Broken(), None
    assert conn.ready() is True
    with pytest.raises(ConnectionResetError):
        conn.recv(10)


def test_import_ahead_imports_in_order_and_stops_when_the_answer_is_there(monkeypatch):
    imported = []
    # ImportAhead's own __import__ calls only (a module global shadows the builtin for them).
    monkeypatch.setattr(plugin, "__import__", lambda name, *a, **k: imported.append(name), raising=False)
    ahead = plugin.ImportAhead("auto")
    answers = iter([False, False, True])
    ahead(lambda: next(answers))
    assert imported == [f"istio_cni.{n}" for n in plugin._AFTER_THE_GET[:2]]
    ahead(lambda: False)  # the next wait goes on where the first stopped, to the end
    assert imported[2:] == [f"istio_cni.{n}" for n in plugin._AFTER_THE_GET[2:] + plugin._BACKEND_MODULES["auto"]]
    ahead(lambda: False)
    assert len(imported) == len(plugin._AFTER_THE_GET) + len(plugin._BACKEND_MODULES["auto"])


def test_import_ahead_leaves_a_failing_import_to_the_add(monkeypatch):
    real = __import__

    def flaky(name, *a, **k):
        if name == "istio_cni.redirect":
            raise ImportError("broken install")
        return real(name, *a, **k)

    monkeypatch.setattr(plugin, "__import__", flaky, raising=False)
    ahead = plugin.ImportAhead("iptc")
    ahead(lambda: False)  # no exception, every other module imported
    assert not ahead.names
    assert "istio_cni.netfilter.iptc" in sys.modules


def test_import_ahead_names_only_modules_that_exist():
    import importlib.util

    for backend in (*plugin._BACKEND_MODULES, "restore"):
        for name in plugin.ImportAhead(backend).names:
            assert importlib.util.find_spec(name) is not None, name
