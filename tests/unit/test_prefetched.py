"""``_fastpath.Prefetched``: the plugin's reader of the front's prefetch record
(src/front/prefetch.h). Records written here byte by byte as the front and its child write them;
any damage gives no outcome or one of HttpsGet's documented exceptions, bounded by the record."""

from __future__ import annotations

import os
import struct
import time

import pytest
from hypothesis import given, settings, strategies as st

from istio_cni import _fastpath, errors

PARAMS = b'{"host":"127.0.0.1","port":443}'
MAGIC = b"istio-cni-front-prefetch 1\n"
OUTCOME = b"istio-cni-prefetch-outcome 1\n"
KINDS = {"ok": 0, "errno": 1, "timeout": 2, "tls": 3, "verify": 4, "material": 5, "too-large": 6, "setup": 7}


def outcome(kind: int = 0, err: int = 0, resumed: int = 1, msg: bytes = b"", answer: bytes = b"",
            at=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)) -> bytes:
    return (OUTCOME + struct.pack("<iiiI", kind, err, resumed, len(msg)) + struct.pack("<6d", *at)
            + struct.pack("<Q", len(answer)) + msg + answer)


def record(tail: bytes | None, params: bytes = PARAMS, head: bytes | None = None):
    """A Prefetched over a memfd holding the front's part (and ``tail``, the child's), its done
    pipe already at EOF (the child gone) unless ``tail`` is None (still running)."""
    fd = os.memfd_create("record")
    os.write(fd, (MAGIC + struct.pack("<Q", len(params)) + params if head is None else head) + (tail or b""))
    r, w = os.pipe()
    if tail is not None:
        os.close(w)
        w = -1
    pre = _fastpath.Prefetched(fd, r)
    return pre, w


def test_an_answer_is_read_as_the_child_wrote_it():
    pre, _ = record(outcome(answer=b"HTTP/1.1 200 OK\r\n\r\n{}", msg=b""))
    assert pre.params() == PARAMS
    pre.arm(time.monotonic() + 5, 1 << 20)
    assert pre.done() is True
    assert pre.result() == b"HTTP/1.1 200 OK\r\n\r\n{}"
    assert pre.resumed() is True
    assert pre.steps() == {"start": 1.0, "context": 2.0, "connected": 3.0, "handshake": 4.0, "answer": 5.0,
                           "done": 6.0}
    pre.close()
    pre.close()  # idempotent


@pytest.mark.parametrize("kind,exc", [("errno", ConnectionRefusedError), ("timeout", TimeoutError),
                                      ("tls", errors.TLSFailure), ("verify", errors.TLSFailure),
                                      ("material", errors.TLSMaterialError), ("too-large", ValueError),
                                      ("setup", errors.TLSUnavailable)])
def test_a_failure_raises_what_httpsget_raises(kind, exc):
    import errno

    pre, _ = record(outcome(KINDS[kind], err=errno.ECONNREFUSED if kind == "errno" else 0, msg=b"why it failed"))
    assert pre.params() == PARAMS
    pre.arm(time.monotonic() + 5, 1 << 20)
    with pytest.raises(exc, match="why it failed"):
        pre.result()


def test_a_child_gone_without_an_outcome_is_no_outcome():
    pre, _ = record(b"")
    assert pre.params() == PARAMS
    pre.arm(time.monotonic() + 5, 1 << 20)
    assert pre.result() is None


def test_done_only_when_the_child_is():
    pre, w = record(None)
    pre.params()
    assert pre.done() is False
    os.close(w)
    assert pre.done() is True


def test_a_child_still_running_at_the_deadline_times_out():
    pre, w = record(None)
    pre.params()
    pre.arm(time.monotonic() - 0.9, 1 << 20)  # the wait ends 1 s after the deadline: ~0.1 s
    with pytest.raises(TimeoutError):
        pre.result()
    os.close(w)


@pytest.mark.parametrize("head", [b"", b"not the front's record\n", MAGIC + struct.pack("<Q", 1 << 40) + PARAMS,
                                  MAGIC + b"\x01"])
def test_a_record_that_is_not_the_fronts_has_no_params(head):
    pre, _ = record(b"", head=head)
    assert pre.params() is None
    assert pre.result() is None  # never armed: nothing is read


def test_an_answer_over_the_cap_is_no_outcome():
    pre, _ = record(outcome(answer=b"x" * 100))
    pre.params()
    pre.arm(time.monotonic() + 5, 99)
    assert pre.result() is None


@settings(max_examples=300, deadline=None)
@given(tail=st.one_of(st.binary(max_size=200), st.builds(
    lambda o, at, b: o[:at] + b + o[at + len(b):],
    st.just(outcome(msg=b"m", answer=b"HTTP/1.1 200 OK\r\n\r\n{}")), st.integers(0, 140),
    st.binary(min_size=1, max_size=8))))
def test_any_outcome_bytes_give_an_answer_none_or_a_documented_exception(tail):
    pre, _ = record(tail)
    assert pre.params() == PARAMS
    pre.arm(time.monotonic() + 5, 64)
    try:
        got = pre.result()
    except (OSError, ValueError, errors.TLSFailure, errors.TLSMaterialError, errors.TLSUnavailable):
        return
    assert got is None or (isinstance(got, bytes) and len(got) <= 64)
