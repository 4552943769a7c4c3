"""The front starts the direct path's pod GET itself (src/front/prefetch.h), through the real
bundle, its installed front, a TLS API server and real network namespaces.

The plugin takes the front's exchange only when it is exactly the one it would make; whatever
the description file holds (stale, damaged, unsound), the ADD answers and commits exactly what
it does without one, the API server sees at most the one extra GET of a stale description, and
the front's child never outlives the plugin.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from peers.fakeapi import FakeAPI
from peers.kubeapi import write_kubeconfig
from support.damage import EDITS, damaged
from support.injected_pods import injected_pod
from support.nodeharness import netconf, plugin_env, rules_in

from istio_cni.k8s import PREFETCH_NAME, TLS_SESSION_NAME

pytestmark = pytest.mark.root
ADDR = ("192.0.2.7/24",)
POD = "pf-1"
PATH = FakeAPI.pod_path("default", POD)


class Setup:
    def __init__(self, api: FakeAPI, run_dir: Path, launcher: Path) -> None:
        self.api, self.run_dir, self.launcher = api, run_dir, launcher
        self.description = run_dir / PREFETCH_NAME

    def add(self, ns: str, **conf) -> tuple[subprocess.CompletedProcess, int, str]:
        """One ADD: the process, the pod GETs the API server saw, what the plugin logged of the
        front's GET ("used", "declined", or "" when none was offered)."""
        before = self.api.hits(PATH)
        data = json.dumps(netconf(self.run_dir, plugin_log_level="debug", **conf)).encode()
        r = subprocess.run([str(self.launcher)], input=data, env=plugin_env(ns, POD), capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
        assert self.api.token.encode() not in r.stdout + r.stderr  # the description holds it; nothing shows it
        taken = [json.loads(x).get("taken", "") for x in r.stderr.decode().splitlines() if "the front's pod GET" in x]
        return r, self.api.hits(PATH) - before, (taken or [""])[0]


@pytest.fixture
def setup(plugin_bundle, tmp_path):
    token = secrets.token_hex(16)
    with FakeAPI(tls_dir=tmp_path / "tls", token=token) as api:
        api.add_pod(injected_pod(POD))
        run_dir = tmp_path / "run"
        run_dir.mkdir(mode=0o700)
        write_kubeconfig(run_dir / "istio-cni-kubeconfig", api.url, api.ca_file, token, "istio-cni")
        yield Setup(api, run_dir, plugin_bundle.launcher)


def test_the_next_add_takes_the_pod_get_the_front_started(setup, netns):
    first, gets, taken = setup.add(netns("pf", addresses=ADDR))
    assert (gets, taken) == (1, "")  # no description yet: the plugin's own GET, which writes one
    st_ = setup.description.stat()
    assert st_.st_mode & 0o777 == 0o600 and st_.st_uid == os.geteuid()
    doc = json.loads(setup.description.read_text())
    assert doc["host"] == "127.0.0.1" and doc["session_file"] == str(setup.run_dir / TLS_SESSION_NAME)
    for _ in range(2):
        ns = netns("pf", addresses=ADDR)
        r, gets, taken = setup.add(ns)
        assert (gets, taken) == (1, "used")  # the front's GET, and only it
        assert r.stdout == first.stdout and "ISTIO_OUTPUT" in rules_in(ns)
    assert setup.description.stat().st_mtime_ns == st_.st_mtime_ns  # unchanged: not rewritten
    assert not [p.name for p in setup.run_dir.iterdir() if ".tmp." in p.name]  # no temp file left


def test_a_stale_description_costs_one_get_and_is_replaced(setup, netns):
    setup.add(netns("pf", addresses=ADDR))
    good = setup.description.read_bytes()
    doc = json.loads(good)
    doc["request"][2] = doc["request"][2].replace("istio-cni-python", "istio-cni-older")  # not our request
    setup.description.write_text(json.dumps(doc))
    r, gets, taken = setup.add(netns("pf", addresses=ADDR))
    assert (gets, taken) == (2, "declined")  # the front's GET went unused; the plugin made its own
    assert setup.description.read_bytes() == good  # and described it again
    assert setup.add(netns("pf", addresses=ADDR))[1:] == (1, "used")


def test_a_rotated_token_is_never_sent_by_the_front(setup, netns):
    setup.add(netns("pf", addresses=ADDR))
    old = setup.api.token
    setup.api.token = secrets.token_hex(16)  # the installer rewrites the kubeconfig with a new token
    write_kubeconfig(setup.run_dir / "istio-cni-kubeconfig", setup.api.url, setup.api.ca_file, setup.api.token,
                     "istio-cni")
    seen = len(setup.api.requests)
    assert setup.add(netns("pf", addresses=ADDR))[1:] == (1, "")  # the description's files changed: no prefetch
    assert all(old not in str(r.headers) for r in setup.api.requests[seen:])
    assert setup.add(netns("pf", addresses=ADDR))[1:] == (1, "used")  # described anew, with the new token


@pytest.mark.parametrize("spoil", ["group-writable", "symlink", "other-owner", "not-json", "unknown-field",
                                   "too-large", "wrong-version", "directory"])
def test_an_unsound_description_is_never_used(setup, netns, spoil, tmp_path):
    first = setup.add(netns("pf", addresses=ADDR))[0]
    good = setup.description.read_bytes()
    doc = json.loads(good)
    f = setup.description
    if spoil == "group-writable":
        f.chmod(0o620)
    elif spoil == "symlink":
        real = tmp_path / "elsewhere"
        real.write_bytes(good)
        real.chmod(0o600)
        f.unlink()
        f.symlink_to(real)
    elif spoil == "other-owner":
        os.chown(f, 1337, 1337)
    elif spoil == "not-json":
        f.write_bytes(good[:-1])
    elif spoil == "unknown-field":
        f.write_text(json.dumps({**doc, "insecure": True}))
    elif spoil == "too-large":
        f.write_text(json.dumps({**doc, "ca_pem": None, "pad": "x" * (64 << 10)}))
    elif spoil == "wrong-version":
        f.write_text(json.dumps({**doc, "version": 2}))
    else:
        f.unlink()
        f.mkdir()
    r, gets, taken = setup.add(netns("pf", addresses=ADDR))
    assert (gets, taken) == (1, "") and r.stdout == first.stdout  # no prefetch: the plugin's own GET
    if spoil != "directory":  # replaced by a sound one (a directory is left alone: rename refuses)
        assert setup.description.read_bytes() == good and not setup.description.is_symlink()
        assert setup.add(netns("pf", addresses=ADDR))[1:] == (1, "used")


def test_the_front_get_is_the_first_attempt(setup, netns):
    setup.add(netns("pf", addresses=ADDR))
    setup.api.script(PATH, 500)  # the front's GET meets a server error: the plugin retries
    r, gets, taken = setup.add(netns("pf", addresses=ADDR))
    assert (gets, taken) == (2, "used")
    assert b"pod lookup failed, retrying" in r.stderr


def _front_processes(launcher: Path) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.readlink(f"/proc/{pid}/exe") == str(launcher):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_the_front_child_dies_with_the_plugin(setup, netns, tmp_path):
    # An ADD the plugin refuses after the front started the GET (ambient mode, which only the
    # plugin checks), against a server that accepts and never answers: the child must go with
    # the plugin, not wait out its timeout.
    setup.add(netns("pf", addresses=ADDR))
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        doc = json.loads(setup.description.read_text())
        doc["port"] = silent.getsockname()[1]
        setup.description.write_text(json.dumps(doc))
        data = json.dumps(netconf(setup.run_dir, ambient_enabled=True)).encode()
        r = subprocess.run([str(setup.launcher)], input=data, env=plugin_env(netns("pf", addresses=ADDR), POD),
                           capture_output=True, timeout=30)
        assert r.returncode != 0 and json.loads(r.stdout)["msg"].startswith("ambient mode")
        end = time.monotonic() + 3
        while _front_processes(setup.launcher) and time.monotonic() < end:
            time.sleep(0.05)
        assert _front_processes(setup.launcher) == []
    finally:
        silent.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_any_damaged_description_still_gives_the_same_add(setup, netns, edits):
    """Whatever bytes the description holds, the ADD answers as without one, in bounded time,
    and never takes an exchange that is not its own."""
    first = setup.add(netns("pf", addresses=ADDR))
    setup.description.write_bytes(damaged(setup.description.read_bytes(), edits))
    t = time.monotonic()
    r, gets, taken = setup.add(netns("pf", addresses=ADDR))
    assert time.monotonic() - t < 10
    assert r.stdout == first[0].stdout and taken in ("", "used", "declined") and 1 <= gets <= 2
