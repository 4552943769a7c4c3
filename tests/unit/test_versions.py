from __future__ import annotations

import pytest

from istio_cni.versions import SUPPORTED_VERSIONS, convert_result, vtuple

R1 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
    "ips": [{"interface": 0, "address": "169.254.1.2/24", "gateway": "169.254.1.1"},
            {"interface": 0, "address": "fd00::2/64", "gateway": "fd00::1"}],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["169.254.1.1"]},
}


def test_same_version_is_identity():
    assert convert_result(R1, "1.0.0") is R1


def test_1x_to_1x_restamps_only():
    out = convert_result(R1, "1.1.0")
    assert out["cniVersion"] == "1.1.0" and out["ips"] == R1["ips"]


def test_1x_to_04_adds_ip_version():
    out = convert_result(R1, "0.4.0")
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["interfaces"] == R1["interfaces"]


def test_04_to_1x_drops_ip_version():
    r04 = convert_result(R1, "0.3.1")
    back = convert_result(r04, "1.0.0")
    assert back == {**R1, "cniVersion": "1.0.0"}


def test_to_legacy_and_back():
    legacy = convert_result(R1, "0.2.0")
    assert legacy["ip4"] == {"ip": "169.254.1.2/24", "gateway": "169.254.1.1", "routes": [{"dst": "0.0.0.0/0"}]}
    assert legacy["ip6"]["ip"] == "fd00::2/64"
    up = convert_result(legacy, "1.0.0")
    assert [ip["address"] for ip in up["ips"]] == ["169.254.1.2/24", "fd00::2/64"]


@pytest.mark.parametrize("bad", ["1.0", "x.y.z", "", "1.0.0.0"])
def test_vtuple_rejects(bad):
    with pytest.raises(ValueError):
        vtuple(bad)


def test_supported_sorted():
    assert list(SUPPORTED_VERSIONS) == sorted(SUPPORTED_VERSIONS, key=vtuple)
