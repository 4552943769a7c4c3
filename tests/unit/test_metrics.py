"""/metrics as a scraper sees it: prometheus_client's exposition from the capped health server,
upstream's metric names and types, the readiness gauge following the installer's state."""

from __future__ import annotations

import os
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.emulator import EMULATOR_ENV

from istio_cni_installer.health import HealthServer, Metrics


@pytest.fixture
def served():
    m = Metrics()
    srv = HealthServer(m, "127.0.0.1", 0, "test-metrics")
    srv.start()
    try:
        yield m, srv.port
    finally:
        srv.stop()


def scrape(port: int) -> tuple[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        ctype = r.headers["Content-Type"]
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    return ctype, families


def value(family, **labels) -> float | None:
    for s in family.samples:
        if s.labels == labels and not s.name.endswith(("_bucket", "_created")):
            return s.value
    return None


def test_upstream_names_and_types_are_served(served):
    m, port = served
    m.inc("istio_cni_installs_total", result="success")
    m.inc("istio_cni_repair_pods_repaired_total", type="label", result="success")
    ctype, fam = scrape(port)
    assert ctype.startswith("text/plain; version=0.0.4")
    # prometheus_client names a counter family without its _total suffix; the sample keeps it.
    assert fam["istio_cni_installs"].type == "counter"
    assert fam["istio_cni_installs"].samples[0].name == "istio_cni_installs_total"
    assert value(fam["istio_cni_installs"], result="success") == 1
    assert value(fam["istio_cni_repair_pods_repaired"], type="label", result="success") == 1
    assert fam["istio_cni_install_ready"].type == "gauge"
    assert fam["istio_cni_add_duration_seconds"].type == "histogram"
    rss = fam["process_resident_memory_bytes"].samples[0].value
    # qemu-user (the aarch64 wheel's unit tier) reports rss 0 in its emulated /proc/self/stat.
    assert rss > 0 or (os.environ.get(EMULATOR_ENV) and rss == 0)
    assert not [s.name for f in fam.values() for s in f.samples if s.name.endswith("_created")]


def test_the_ready_gauge_follows_readiness_at_scrape_time(served):
    m, port = served
    assert value(scrape(port)[1]["istio_cni_install_ready"]) == 0
    m.set_ready(True)
    assert value(scrape(port)[1]["istio_cni_install_ready"]) == 1
    m.set_ready(False, "conflist gone")
    assert value(scrape(port)[1]["istio_cni_install_ready"]) == 0


def test_an_undeclared_metric_or_label_is_a_bug_not_a_new_series():
    m = Metrics()
    with pytest.raises(KeyError):
        m.inc("istio_cni_made_up_total")
    with pytest.raises(ValueError):
        m.inc("istio_cni_installs_total", outcome="success")


def test_each_metrics_object_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.inc("istio_cni_agent_requests_total", result="ok")
    assert a.get("istio_cni_agent_requests_total", result="ok") == 1
    assert b.get("istio_cni_agent_requests_total", result="ok") == 0
