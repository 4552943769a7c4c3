"""``istio-cni validate`` (the istio-validation init container's probe) in real netns."""

from __future__ import annotations

import subprocess

import pytest

from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
from istio_cni.tools import netns as nsutil

pytestmark = pytest.mark.root


def load_rules(name: str, cfg: RedirectConfig) -> None:
    # iptables-legacy-restore, not our backends: the probe is tested independently of them.
    out = nsutil.exec_in(name, "iptables-legacy-restore", input=build(cfg).restore_text(4), timeout=30)
    assert out.returncode == 0, out.stderr


def validate(validate_bin, name: str, *args: str) -> subprocess.CompletedProcess:
    return nsutil.exec_in(name, str(validate_bin), "validate", *args, timeout=60)


def test_passes_when_the_redirect_rules_are_in_place(validate_bin, netns):
    ns = netns("val")
    load_rules(ns, RedirectConfig())
    out = validate(validate_bin, ns, "--timeout", "5")
    assert out.returncode == 0, out.stderr
    assert "redirected to the proxy" in out.stderr


def test_fails_with_126_and_points_at_repair_without_rules(validate_bin, netns):
    ns = netns("val")
    out = validate(validate_bin, ns, "--timeout", "0.5")
    assert out.returncode == 126
    assert "Connection refused" in out.stderr
    assert "repair" in out.stderr


def test_fails_when_the_rules_exempt_a_different_uid(validate_bin, netns):
    # Rules for proxy uid 1337, probe as 1338: the owner match must not fire.
    ns = netns("val")
    load_rules(ns, RedirectConfig())
    out = validate(validate_bin, ns, "--timeout", "0.5", "-u", "1338")
    assert out.returncode == 126, out.stderr


def test_custom_proxy_ports_follow_the_rules(validate_bin, netns):
    ns = netns("val")
    load_rules(ns, RedirectConfig(inbound_capture_port="16006", proxy_port="16001"))
    assert validate(validate_bin, ns, "--timeout", "0.5").returncode == 126  # listens on 15006: misses
    out = validate(validate_bin, ns, "--timeout", "5", "-z", "16006", "-p", "16001")
    assert out.returncode == 0, out.stderr


def test_bad_port_is_named(validate_bin, netns):
    out = validate(validate_bin, netns("val"), "--probe-port", "70000")
    assert out.returncode != 0
    assert "--probe-port 70000" in out.stderr
