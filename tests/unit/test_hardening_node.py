"""The node program under hostile or clumsy peers (issue 13, item 7): bounded health/metrics
servers, temp files that never follow a planted link, one log line per invalid conf content."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
import urllib.request

import pytest

from istio_cni_installer import atomic
from istio_cni_installer.health import HealthServer, Metrics

WAIT_SECONDS = 60.0  # upper bound of every wait-until loop below (never reached when it works)


def handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def wait_until(pred, what: str) -> None:
    end = time.monotonic() + WAIT_SECONDS
    while not pred():
        assert time.monotonic() < end, f"gave up waiting: {what}"
        time.sleep(0.05)


@pytest.fixture
def serve():
    started = []

    def make(**kw) -> HealthServer:
        m = Metrics()
        m.set_ready(True)
        srv = HealthServer(m, "127.0.0.1", 0, "test-health", **kw)
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def drain_until_closed(socks: list, on_tick) -> dict:
    """Read every socket until the server closes it; returns {socket: bytes received}."""
    got = {s: b"" for s in socks}
    open_ = set(socks)
    end = time.monotonic() + WAIT_SECONDS
    while open_:
        assert time.monotonic() < end, f"{len(open_)} connections still open"
        on_tick()
        readable, _, _ = select.select(list(open_), [], [], 0.1)
        for s in readable:
            try:
                data = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                data = b""
            got[s] += data
            if not data:
                open_.discard(s)
    return got


def test_idle_connections_are_capped_and_closed(serve):
    base = handler_threads()
    srv = serve(idle_timeout=1.0, max_connections=8)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(100)]
    peak = [0]

    def sample() -> None:
        peak[0] = max(peak[0], handler_threads() - base)

    try:
        got = drain_until_closed(socks, sample)
    finally:
        for s in socks:
            s.close()
    busy = [s for s, data in got.items() if data.startswith(b"HTTP/1.1 503 ")]
    assert peak[0] <= 8, f"{peak[0]} handler threads for 100 idle connections (cap 8)"
    assert busy  # over the cap: refused at once with a 503, no thread
    assert all(data == b"" or s in busy for s, data in got.items())  # the rest: closed when idle
    wait_until(lambda: handler_threads() == base, "handler threads to end")
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/readyz", timeout=10) as r:
        assert r.status == 200  # and the server still answers probes


def test_a_trickling_client_is_cut_at_the_connection_lifetime(serve):
    srv = serve(idle_timeout=30.0, lifetime=1.0)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    end = time.monotonic() + WAIT_SECONDS
    try:
        while True:  # one header byte at a time, never idle long enough for the idle timeout
            assert time.monotonic() < end, "the trickling connection was never closed"
            try:
                s.send(b"G")
            except (BrokenPipeError, ConnectionResetError):
                break
            r, _, _ = select.select([s], [], [], 0.2)
            if r:
                try:
                    if s.recv(4096) == b"":
                        break
                except ConnectionResetError:
                    break
    finally:
        s.close()
    wait_until(lambda: srv.server.open_connections() == 0, "the connection to be forgotten")


# --- atomic writes ------------------------------------------------------------------------


def test_write_atomic_never_follows_a_link_at_the_old_predictable_temp_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    d = tmp_path / "net.d"
    d.mkdir()
    final = d / "10-calico.conflist"
    old_name = d / f".{final.name}.tmp.{os.getpid()}"  # what the writer used to open O_TRUNC
    old_name.symlink_to(victim)
    atomic.write_atomic(final, b'{"new": 1}\n', 0o600)
    assert victim.read_text() == "precious\n"
    assert final.read_bytes() == b'{"new": 1}\n' and not final.is_symlink()
    assert final.stat().st_mode & 0o777 == 0o600
    assert os.readlink(old_name) == str(victim)  # the planted link is left alone, unfollowed


def test_write_atomic_never_follows_a_link_at_a_guessed_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    final = tmp_path / "istio-cni-kubeconfig"
    names = iter(["guessed", "guessed", "second"])
    monkeypatch.setattr(atomic, "_random_suffix", lambda: next(names))
    planted = atomic.temp_name(final, "guessed")
    planted.symlink_to(victim)
    atomic.write_atomic(final, "new\n")
    assert victim.read_text() == "precious\n"
    assert final.read_text() == "new\n"
    assert planted.is_symlink() and not atomic.temp_name(final, "second").exists()


def test_write_atomic_temp_names_are_unpredictable_and_cleaned_as_ours(tmp_path):
    final = tmp_path / "f.conflist"
    names = {atomic.temp_name(final, atomic._random_suffix()).name for _ in range(50)}
    assert len(names) == 50
    crashed = tmp_path / next(iter(names))
    crashed.write_text("half")
    assert atomic.remove_stale_temps(tmp_path, ("f.conflist",)) == [crashed.name]


def test_write_atomic_gives_up_after_bounded_collisions(tmp_path, monkeypatch):
    final = tmp_path / "f"
    monkeypatch.setattr(atomic, "_random_suffix", lambda: "same")
    atomic.temp_name(final, "same").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic.write_atomic(final, "x")
    assert not final.exists() and not (tmp_path / "nowhere").exists()


# --- invalid conf files -------------------------------------------------------------------


def _conflist(tmp_path):
    from istio_cni_installer.conflist import ConfList
    from istio_cni_installer.settings import parse

    return ConfList(parse([], {"MOUNTED_CNI_NET_DIR": str(tmp_path), "KUBERNETES_NODE_NAME": "n"}))


def _skips(lines) -> list:
    return [(ln["file"], ln["reason"]) for ln in lines() if ln["msg"] == "skipping invalid CNI config file"]


CALICO = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]}


def test_each_invalid_conf_file_is_logged_once_per_content(tmp_path, log_lines):
    (tmp_path / "00-broken.conflist").write_text('{"name": "x", "plugins": [')  # cut short
    (tmp_path / "01-shape.conf").write_text('["not", "an", "object"]')
    (tmp_path / "10-calico.conflist").write_text(json.dumps(CALICO))
    cl = _conflist(tmp_path)
    for _ in range(5):  # the installer loop re-plans on every inotify event
        cl.check()
        cl.install()
    skips = sorted(_skips(log_lines))
    assert [f for f, _ in skips] == ["00-broken.conflist", "01-shape.conf"]
    assert skips[0][1].startswith("00-broken.conflist: not JSON (Expecting value")
    assert skips[1][1] == "01-shape.conf: top level is list, not an object"
    # a new bad content is news; the same content again is not
    (tmp_path / "00-broken.conflist").write_text('{"plugins": [{"type": "calico"}]}')
    for _ in range(3):
        cl.check()
    assert _skips(log_lines)[2:] == [("00-broken.conflist", "00-broken.conflist: conflist has no 'name'")]


def test_a_removed_then_recreated_invalid_file_is_logged_again(tmp_path, log_lines):
    bad = tmp_path / "00-bad.conf"
    bad.write_text("{}")
    (tmp_path / "10-calico.conflist").write_text(json.dumps(CALICO))
    cl = _conflist(tmp_path)
    cl.check()
    bad.unlink()
    cl.check()
    bad.write_text("{}")
    cl.check()
    cl.check()
    assert _skips(log_lines) == [("00-bad.conf", "00-bad.conf: .conf has no string 'type'")] * 2


def test_a_fifo_or_huge_file_under_a_conf_name_is_skipped_not_read(tmp_path, log_lines):
    from istio_cni_installer import cniconfig as cc

    os.mkfifo(tmp_path / "00-fifo.conf.real")
    (tmp_path / "00-fifo.conf").symlink_to(tmp_path / "00-fifo.conf.real")  # is_file() is False
    with pytest.raises(cc.ConfigFileError, match="not a regular file"):
        cc.read_conf(tmp_path / "00-fifo.conf")  # returns at once instead of blocking
    (tmp_path / "01-huge.conflist").write_bytes(b" " * (cc.MAX_CONF_BYTES + 1))
    (tmp_path / "10-calico.conflist").write_text(json.dumps(CALICO))
    cl = _conflist(tmp_path)
    assert cl.primary_name() == "10-calico.conflist"
    assert _skips(log_lines) == [
        ("01-huge.conflist", f"01-huge.conflist: unreadable (larger than {cc.MAX_CONF_BYTES} bytes)")]


def test_stop_closes_the_connections_it_still_serves():
    base = handler_threads()
    srv = HealthServer(Metrics(), "127.0.0.1", 0, "test-health", idle_timeout=60.0, lifetime=60.0)
    srv.start()
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(4)]
    try:
        wait_until(lambda: srv.server.open_connections() == 4, "the connections to be served")
        srv.stop()
        drain_until_closed(socks, lambda: None)
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: handler_threads() == base, "handler threads to end")
