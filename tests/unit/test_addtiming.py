"""The plugin's own ADD timing report (istio_cni.addtiming) and its exit (os._exit after flush)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from istio_cni import addtiming, agent_client
from istio_cni.log import log

SRC = str(Path(addtiming.__file__).resolve().parents[1])


@pytest.fixture
def timing(tmp_path, monkeypatch):
    for name, value in (("agent_socket", str(tmp_path / "agent.sock")), ("answered_by_agent", False),
                        ("fallback", ""), ("_t0", 0.0), ("_before", 0.0)):
        monkeypatch.setattr(addtiming, name, value)
    monkeypatch.setattr(log, "sinks", [])
    addtiming.mark_start()
    return tmp_path


def test_elapsed_counts_the_time_before_our_first_line(timing):
    assert addtiming._before > 0  # /proc/self/schedstat: this process has run before mark_start
    assert addtiming.elapsed() >= addtiming._before


def test_direct_add_without_a_relay_is_spooled_in_the_run_dir(timing):
    addtiming.fallback = addtiming.FALLBACK_ABSENT
    addtiming.finish(0)
    addtiming.finish(1)
    lines = [json.loads(x) for x in (timing / addtiming.SPOOL_NAME).read_text().splitlines()]
    assert [(d["report"], d["path"], d["result"], d["fallback"]) for d in lines] == [
        ("add", "direct", "ok", "absent"), ("add", "direct", "error", "absent")]
    # seconds = what this task ran/waited before mark_start (/proc/self/schedstat: for the pytest
    # process late in a long suite, minutes; for the plugin, milliseconds) + time since then.
    assert all(addtiming._before <= d["seconds"] < addtiming._before + 60 for d in lines)
    assert all(d["seconds"] > 0 for d in lines)
    assert (timing / addtiming.SPOOL_NAME).stat().st_mode & 0o777 == 0o600


def test_a_direct_add_rides_on_the_log_relay_when_it_sends_anyway(timing):
    buf = agent_client.forward_logs(addtiming.agent_socket)
    log.warning("node agent unusable")  # the relay now has something to send at exit
    addtiming.fallback = addtiming.FALLBACK_DECLINED
    addtiming.finish(0)
    assert json.loads(buf.lines[-1])["fallback"] == "declined"
    assert not (timing / addtiming.SPOOL_NAME).exists()


def test_nothing_is_reported_for_an_add_the_agent_answered_or_without_an_agent(timing, monkeypatch):
    addtiming.answered_by_agent = True  # the agent observed it itself
    addtiming.finish(0)
    monkeypatch.setattr(addtiming, "answered_by_agent", False)
    monkeypatch.setattr(addtiming, "agent_socket", "")
    addtiming.finish(0)
    assert list(timing.iterdir()) == []


def test_spool_stops_growing_at_its_cap_and_never_follows_a_symlink(timing, tmp_path_factory):
    spool = timing / addtiming.SPOOL_NAME
    spool.write_bytes(b"x" * addtiming.SPOOL_MAX_BYTES)
    addtiming.finish(0)
    assert spool.stat().st_size == addtiming.SPOOL_MAX_BYTES
    spool.unlink()
    target = tmp_path_factory.mktemp("elsewhere") / "victim"
    target.write_text("")
    spool.symlink_to(target)
    addtiming.finish(0)
    assert target.read_text() == ""


EXIT_PROBE = """
import atexit, sys
sys.path.insert(0, SRC)
atexit.register(lambda: sys.stderr.write("handler ran; transport loaded: %s\\n"
                                         % ("istio_cni.transport" in sys.modules)))
sys.stdout.write("buffered, ")  # left in the buffer: the exit must flush it
from istio_cni.__main__ import main
main()
"""


def test_exit_runs_exit_handlers_flushes_and_keeps_the_status():
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "VERSION"}
    r = subprocess.run([sys.executable, "-I", "-S", "-c", EXIT_PROBE.replace("SRC", repr(SRC))], env=env,
                       input=b"{}", capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"buffered, {") and b"supportedVersions" in r.stdout
    assert b"handler ran; transport loaded: False" in r.stderr
    env["CNI_COMMAND"] = "BOGUS"
    r = subprocess.run([sys.executable, "-I", "-S", "-c", EXIT_PROBE.replace("SRC", repr(SRC))], env=env,
                       input=b"{}", capture_output=True, timeout=60)
    assert r.returncode == 1 and b'"code":4' in r.stdout.replace(b" ", b"")
    assert b"handler ran" in r.stderr
