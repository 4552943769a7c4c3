"""Fuzz: the plugin's node-agent client against a fake agent socket answering generated
garbage, oversized, slow, badly framed and non-UTF-8 replies (issue 13, item 6).

The contract: ``try_agent`` falls back (returns ``None``: "use the direct path") after exactly
one warning line, within the agent timeout (plus scheduling slack); it returns a result only
when the reply is a well-formed ``{"result": <the prevResult this ADD hands on>}``, and raises
only the CNI error that a well-formed ``{"error": {...}}`` reply carries. Nothing else escapes.
"""

from __future__ import annotations

import io
import json
import time

import pytest
from hypothesis import given, settings, strategies as st
from support.rawhttp import Answer, RawServer, split

from istio_cni import agent_client, errors
from istio_cni.config import parse_conf
from istio_cni.log import log
from istio_cni.skel import CmdArgs

PREV = {"cniVersion": "1.0.0", "ips": [{"address": "169.254.10.2/24"}]}
NETCONF = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni", "prevResult": PREV}
TIMEOUT = 0.5
# Scheduling slack on a loaded 2-core machine (load 10 seen during `make test`): a bound
# against hangs, not a benchmark; the deadline itself is proven by the TimeoutError cases.
SLACK = 5.0
FUZZ = settings.get_profile("fuzz")  # the tier's profile (tests/fuzz/conftest.py): seeded, no deadline


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fuzz-agent")
    conf = parse_conf(dict(NETCONF, cni_agent_run_dir=str(run_dir), agent_timeout_seconds=TIMEOUT))
    with RawServer(unix_path=conf.agent_socket) as server:
        yield server, conf


ARGS = CmdArgs("ADD", "c0ffee" * 8, "/run/netns/x", "eth0", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
               "/opt/cni/bin", NETCONF, json.dumps(NETCONF).encode())


def exchange(agent, pieces: list[bytes], gap: float = 0.0):
    """try_agent against the scripted reply -> (outcome, log lines, elapsed). ``outcome`` is
    the return value or the CNI error raised; any other exception fails the test."""
    server, conf = agent
    saved_sinks, saved_stream = list(log.sinks), log.stream
    log.stream = io.StringIO()
    answer = server.script(Answer(pieces, gap, read_request=True))
    start = time.monotonic()
    try:
        outcome = agent_client.try_agent(conf, ARGS, PREV)
    except errors.CNIError as e:
        outcome = e
    finally:
        elapsed = time.monotonic() - start
        lines = log.stream.getvalue().splitlines()
        log.sinks[:], log.stream = saved_sinks, saved_stream
    answer.done.wait(10)
    if not any("no answer within" in line for line in lines):  # a stalled machine may time out first
        assert answer.request.startswith(b"POST /v1/cni HTTP/1.1\r\n")
    assert elapsed < TIMEOUT + SLACK, f"client overran the agent timeout: {elapsed:.2f} s"
    return outcome, lines


def assert_fell_back(outcome, lines):
    assert outcome is None, outcome
    assert len(lines) == 1, lines  # logged once
    line = json.loads(lines[0])
    assert line["level"] == "warn" and "falling back to the direct path" in line["msg"]


def http(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


# ---- generators ----------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
error_docs = st.fixed_dictionaries({}, optional={
    "code": st.integers(-5, 1200) | json_values, "msg": json_values, "details": json_values})
shaped_docs = st.one_of(
    st.fixed_dictionaries({"result": json_values | st.just(PREV) | st.just(dict(PREV, cniVersion="0.4.0"))}),
    st.fixed_dictionaries({"error": error_docs | json_values}),
    st.fixed_dictionaries({"fallback": json_values}),
    st.dictionaries(st.sampled_from(["result", "error", "fallback", "message"]), json_values, max_size=3),
    json_values,
)


def non_utf8(doc: bytes, at: int, junk: bytes) -> bytes:
    at %= len(doc) + 1
    return doc[:at] + junk + doc[at:]


# ---- properties ----------------------------------------------------------------------------

@settings(FUZZ, max_examples=150)
@given(raw=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=3))
def test_garbage_replies_fall_back(agent, raw, cuts):
    outcome, lines = exchange(agent, split(raw, cuts))
    assert_fell_back(outcome, lines)


@settings(FUZZ, max_examples=250)
@given(doc=shaped_docs)
def test_json_replies_give_result_error_or_fallback(agent, doc):
    outcome, lines = exchange(agent, [http(json.dumps(doc).encode())])
    if outcome is None:
        assert_fell_back(outcome, lines)
    elif isinstance(outcome, errors.CNIError):
        # only what a well-formed error reply carries: its registered code, never 999
        assert isinstance(doc, dict) and "error" in doc and "fallback" not in doc
        assert outcome.code == doc["error"]["code"] and outcome.code != 999
    else:
        assert outcome == PREV and isinstance(doc, dict) and doc.get("result") == PREV


@settings(FUZZ, max_examples=100)
@given(doc=shaped_docs, at=st.integers(0, 1 << 12),
       junk=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]))
def test_non_utf8_replies_fall_back(agent, doc, at, junk):
    outcome, lines = exchange(agent, [http(non_utf8(json.dumps(doc).encode(), at, junk))])
    assert_fell_back(outcome, lines)


FRAMINGS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
]


@settings(FUZZ, max_examples=60)
@given(head=st.sampled_from(FRAMINGS), body=st.sampled_from([b"", b"{}", json.dumps({"result": PREV}).encode()]))
def test_bad_framing_falls_back(agent, head, body):
    outcome, lines = exchange(agent, [head + body])
    assert_fell_back(outcome, lines)


@settings(FUZZ, max_examples=6)
@given(size=st.integers(agent_client.MAX_ANSWER + 1, agent_client.MAX_ANSWER + 200_000),
       framing=st.sampled_from(["length", "close"]))
def test_oversized_replies_fall_back(agent, size, framing):
    body = b'{"result": "' + b"x" * size + b'"}'
    head = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) if framing == "length"
            else b"HTTP/1.1 200 OK\r\n\r\n")
    outcome, lines = exchange(agent, [head, body])
    assert_fell_back(outcome, lines)
    assert "larger than" in lines[0]


@settings(FUZZ, max_examples=8)
@given(n=st.integers(12, 30), gap=st.floats(0.05, 0.1))
def test_slow_replies_fall_back_within_the_timeout(agent, n, gap):
    reply = http(json.dumps({"result": PREV}).encode())
    cuts = [len(reply) * i // n for i in range(1, n)]  # >= 11 pauses of >= 0.05 s: past 0.5 s
    outcome, lines = exchange(agent, split(reply, cuts), gap)
    assert_fell_back(outcome, lines)
    assert f"no answer within {TIMEOUT} s" in lines[0]
