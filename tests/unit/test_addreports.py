"""ADD timing reports -> histogram and fallback counter: only well-formed reports count."""

from __future__ import annotations

import json

import pytest
from support.promtext import sample

from istio_cni import addtiming
from istio_cni_installer.agent import addreports
from istio_cni_installer.health import Metrics

GOOD = {"report": "add", "path": "direct", "result": "ok", "seconds": 0.042, "fallback": "absent"}


def test_a_report_lands_in_its_bucket_and_the_fallback_counter():
    m = Metrics()
    assert addreports.observe_report(m, GOOD)
    text = m.render()
    assert sample(text, "istio_cni_add_duration_seconds_bucket", path="direct", result="ok", le="0.03") == 0
    assert sample(text, "istio_cni_add_duration_seconds_bucket", path="direct", result="ok", le="0.05") == 1
    assert sample(text, "istio_cni_add_duration_seconds_bucket", path="direct", result="ok", le="+Inf") == 1
    assert sample(text, "istio_cni_add_duration_seconds_sum", path="direct", result="ok") == pytest.approx(0.042)
    assert sample(text, "istio_cni_add_duration_seconds_count", path="direct", result="ok") == 1
    assert sample(text, "istio_cni_agent_fallbacks_total", reason="absent") == 1


def test_buckets_are_cumulative_and_overflow_counts_only_in_inf():
    m = Metrics()
    for s in (0.001, 0.012, 0.012, 99.0):
        m.observe("istio_cni_add_duration_seconds", s, path="agent", result="ok")
    text = m.render()
    bucket = "istio_cni_add_duration_seconds_bucket"
    assert sample(text, bucket, path="agent", result="ok", le="0.005") == 1
    assert sample(text, bucket, path="agent", result="ok", le="0.015") == 3
    assert sample(text, bucket, path="agent", result="ok", le="10") == 3
    assert sample(text, bucket, path="agent", result="ok", le="+Inf") == 4
    assert m.histogram_count("istio_cni_add_duration_seconds", path="agent", result="ok") == 4


@pytest.mark.parametrize("change", [
    {"report": "other"}, {"path": "sideways"}, {"result": "maybe"}, {"seconds": -1}, {"seconds": True},
    {"seconds": float("nan")}, {"seconds": 1e9}, {"seconds": "0.1"}, {"fallback": "bogus"},
    {"path": 'agent",evil="1'},
])
def test_anything_but_an_exact_report_is_dropped(change):
    m = Metrics()
    assert not addreports.observe_report(m, {**GOOD, **change})
    assert "istio_cni_add_duration_seconds_count" not in m.render()


def test_agent_answers_add_the_plugins_own_elapsed_time():
    m = Metrics()
    addreports.observe_agent_add(m, 0.010, 0.002, "ok")
    addreports.observe_agent_add(m, "junk", 0.002, "error")  # unusable elapsed: our part only
    text = m.render()
    assert sample(text, "istio_cni_add_duration_seconds_sum", path="agent", result="ok") == pytest.approx(0.012)
    assert sample(text, "istio_cni_add_duration_seconds_sum", path="agent", result="error") == pytest.approx(0.002)


def test_spool_is_drained_once_and_skips_garbage(tmp_path):
    spool = tmp_path / addtiming.SPOOL_NAME
    spool.write_text(json.dumps(GOOD) + "\nnot json\n" + json.dumps({**GOOD, "path": "x"}) + "\n"
                     + json.dumps({**GOOD, "fallback": ""}) + "\n")
    m = Metrics()
    assert addreports.drain_spool(m, str(tmp_path)) == 2
    assert not spool.exists() and list(tmp_path.iterdir()) == []
    assert addreports.drain_spool(m, str(tmp_path)) == 0
    assert m.histogram_count("istio_cni_add_duration_seconds", path="direct", result="ok") == 2
    assert m.get("istio_cni_agent_fallbacks_total", reason="absent") == 1
