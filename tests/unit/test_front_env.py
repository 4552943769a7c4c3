"""What the compiled front passes the plugin in its environment (``__main__``): any value of
those variables is taken out of the environment and either names what it should or is dropped,
never an exception (the entry point runs them before the plugin's error handling exists)."""

from __future__ import annotations

import os
import posix

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import istio_cni
from istio_cni import __main__ as entry

_values = st.one_of(
    st.binary(min_size=0, max_size=40).filter(lambda b: b"\0" not in b),
    st.lists(st.integers(-5, 10**9), min_size=0, max_size=5).map(lambda xs: b",".join(b"%d" % x for x in xs)),
)


@pytest.fixture
def clean(monkeypatch):
    monkeypatch.setattr(istio_cni, "FRONT_PREFETCH", None)
    monkeypatch.setattr(istio_cni, "FRONT_PREFETCH_PID", 0)
    monkeypatch.setattr(istio_cni, "FRONT_EXCHANGE_FD", None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_values)
def test_any_prefetch_value_is_taken_or_dropped(clean, value):
    istio_cni.FRONT_PREFETCH, istio_cni.FRONT_PREFETCH_PID = None, 0
    posix.environ[entry.FRONT_PREFETCH_ENV.encode()] = value
    entry._take_front_prefetch()
    assert entry.FRONT_PREFETCH_ENV not in os.environ  # gone, whatever it held
    got = istio_cni.FRONT_PREFETCH
    if got is not None:  # only three ASCII numbers, the first two open fds
        record, done, _ = (int(p) for p in value.split(b","))
        assert got == (record, done)
    istio_cni.FRONT_PREFETCH_PID = 0  # never reaped here: not our child


def test_the_fronts_three_numbers_are_taken(clean):
    r, w = os.pipe()
    try:
        posix.environ[entry.FRONT_PREFETCH_ENV.encode()] = b"%d,%d,4242" % (r, w)
        entry._take_front_prefetch()
        assert istio_cni.FRONT_PREFETCH == (r, w) and istio_cni.FRONT_PREFETCH_PID == 4242
        assert not os.get_inheritable(r) and not os.get_inheritable(w)
    finally:
        istio_cni.FRONT_PREFETCH_PID = 0
        os.close(r)
        os.close(w)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_values)
def test_any_exchange_value_is_taken_or_unreadable(clean, value):
    posix.environ[entry.FRONT_EXCHANGE_ENV.encode()] = value
    entry._take_front_exchange()
    assert entry.FRONT_EXCHANGE_ENV not in os.environ
    fd = istio_cni.FRONT_EXCHANGE_FD
    assert fd == -1 or (value.isdigit() and fd == int(value))
