"""agent_client replays the compiled front's record of its exchange with the agent
(src/front/agent.h): the same outcome as the live exchange, the agent never asked again."""

from __future__ import annotations

import errno
import io
import json
import os

import pytest

import istio_cni
from istio_cni import agent_client, errors
from istio_cni.config import parse_conf
from istio_cni.log import log
from istio_cni.skel import CmdArgs

PREV = {"cniVersion": "1.0.0", "ips": [{"address": "169.254.10.2/24"}]}


@pytest.fixture
def conf(tmp_path):
    # No socket at this path: a live exchange would be "absent"; only a replay can answer.
    return parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "istio-cni", "prevResult": PREV,
                       "cni_agent_run_dir": str(tmp_path / "run"), "agent_timeout_seconds": 0.5})


ARGS = CmdArgs("ADD", "c0ffee", "/run/netns/x", "eth0", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
               "/opt/cni/bin", {}, b"{}")


def record(sock: str, connect="ok", send="ok", end="complete", raw: bytes = b"") -> int:
    fd = os.memfd_create("test-exchange")
    os.write(fd, f"istio-cni-front-exchange 1 {connect} {send} {end} {sock.encode().hex()}\n".encode() + raw)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def http(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)


def replay(conf, fd: int):
    saved_sinks, saved_stream = list(log.sinks), log.stream
    log.stream = io.StringIO()
    istio_cni.FRONT_EXCHANGE_FD = fd
    try:
        try:
            outcome = agent_client.try_agent(conf, ARGS, PREV)
        except errors.CNIError as e:
            outcome = e
        lines = [json.loads(x) for x in log.stream.getvalue().splitlines()]
    finally:
        log.sinks[:], log.stream = saved_sinks, saved_stream
        istio_cni.FRONT_EXCHANGE_FD = None
    with pytest.raises(OSError):
        os.fstat(fd)  # read once, then closed
    return outcome, [x for x in lines if x["level"] == "warn"]


def test_a_recorded_result_is_the_answer(conf):
    outcome, warnings = replay(conf, record(conf.agent_socket, raw=http({"result": PREV})))
    assert outcome == PREV and warnings == []


def test_a_recorded_error_is_raised(conf):
    answer = http({"error": {"code": 7, "msg": "bad annotation", "details": "x"}})
    outcome, _ = replay(conf, record(conf.agent_socket, raw=answer))
    assert isinstance(outcome, errors.CNIError) and outcome.code == 7 and outcome.msg == "bad annotation"


@pytest.mark.parametrize(
    "fields, cause",
    [
        ({"connect": str(errno.ECONNREFUSED)}, "ConnectionRefusedError"),
        ({"connect": "timeout"}, "no answer within 0.5 s"),
        ({"end": "timeout", "raw": b"HTTP/1.1 200 OK\r\n"}, "no answer within 0.5 s"),
        ({"end": str(errno.ECONNRESET), "raw": b"HTTP/1.1 2"}, "ConnectionResetError"),
        ({"send": str(errno.EPIPE), "end": "eof"}, "BrokenPipeError"),
        ({"raw": b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"}, "agent answered HTTP 500"),
        ({"raw": b"garbage\r\n\r\n"}, "bad HTTP answer"),
        ({"raw": http({"fallback": "cannot see the pod"})}, "agent asked for the direct path"),
    ],
)
def test_recorded_failures_fall_back_as_a_live_exchange_would(conf, fields, cause):
    raw = fields.pop("raw", b"")
    outcome, warnings = replay(conf, record(conf.agent_socket, raw=raw, **fields))
    assert outcome is None
    assert len(warnings) == 1 and cause in warnings[0]["cause"], warnings


@pytest.mark.parametrize("data", ["", "istio-cni-front-exchange 2 ok ok eof {sock}\n", "no newline",
                                  "istio-cni-front-exchange 1 ok ok bogus {sock}\n",
                                  "istio-cni-front-exchange 1 ok ok eof zz\n",
                                  "istio-cni-front-exchange 1 ok eof {sock}\n"])
def test_an_unreadable_record_falls_back_once(conf, data):
    fd = os.memfd_create("test-exchange")
    os.write(fd, data.format(sock=conf.agent_socket.encode().hex()).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    outcome, warnings = replay(conf, fd)
    assert outcome is None and len(warnings) == 1 and "front hand-over record" in warnings[0]["cause"]


def test_a_record_of_another_socket_is_ignored(conf):
    outcome, warnings = replay(conf, record("/elsewhere/agent.sock", raw=http({"result": PREV})))
    assert outcome is None and warnings == []  # the live path: no socket here, "absent"
