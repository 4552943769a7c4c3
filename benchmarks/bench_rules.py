"""The rule engine's cost on the ADD path: build + render a pod's rules, in process.

* ``rules-build-default``: RedirectConfig() (upstream defaults) -> RuleSet -> both restore
  payloads (and the nft transaction when rules.nft_builder exists, as ``build`` does).
* ``rules-build-complex``: TPROXY, inbound '*', CIDR lists, DNS capture with servers,
  owner groups, excluded and KubeVirt NICs, IPv6: upstream's largest rule sets.
* ``rules-render-only``: rendering an already built complex RuleSet (how much of the above
  is string building).
* ``baseline-upstream-dry-run``: upstream ``istio-iptables --dry-run`` for the default
  config, exec'd inside a pod-like netns: what the 2019 plugin paid to get the same rules
  (an exec of the rule tool per pod). Measured in the same run; the in-process build must
  stay below it.
"""

from __future__ import annotations

import harness
import pytest
from peers.tools import tool_path

from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig

COMPLEX = {
    "interception_mode": "TPROXY", "inbound_ports_include": "*",
    "inbound_ports_exclude": "15090,15021,15020", "outbound_ip_ranges_include": "*",
    "outbound_ip_ranges_exclude": "10.96.0.0/12,fd00:10:96::/112",
    "outbound_ports_exclude": "25,587", "exclude_interfaces": "eth9",
    "reroute_virtual_interfaces": "vnet0", "redirect_dns": True,
    "dns_servers_v4": ("10.96.0.10",), "dns_servers_v6": ("fd00:10:96::a",),
    "owner_groups_exclude": "888", "drop_invalid": True, "enable_ipv6": True,
    "proxy_uids": "1337,1338",
}
MEDIANS: dict[str, float] = {}


def build_and_render(kwargs: dict) -> str:
    rules = build(RedirectConfig(**kwargs))
    return rules.restore_text(4) + rules.restore_text(6) + rules.nft_text()


def _keep(benchmark, role: str) -> None:
    benchmark.extra_info["role"] = role
    MEDIANS[role] = benchmark.stats.stats.median


def bench_rules_build_default(benchmark):
    text = benchmark(build_and_render, {})
    assert "-A OUTPUT -j ISTIO_OUTPUT\n" in text
    _keep(benchmark, "rules-build-default")


def bench_rules_build_complex(benchmark):
    text = benchmark(build_and_render, COMPLEX)
    assert "-j TPROXY" in text and "ISTIO_OUTPUT_DNS" in text and "::6/128" in text
    _keep(benchmark, "rules-build-complex")


def bench_rules_render_only(benchmark):
    rules = build(RedirectConfig(**COMPLEX))
    text = benchmark(lambda: rules.restore_text(4) + rules.restore_text(6) + rules.nft_text())
    assert "COMMIT" in text
    _keep(benchmark, "rules-render-only")


def bench_rules_baseline_upstream_dry_run(benchmark):
    binary = tool_path("istio-iptables")
    pod = harness.PodNetns("rules")
    argv = ["nsenter", f"--net={pod.path}", str(binary), "--dry-run", "-u", "1337"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        result = benchmark.pedantic(lambda: harness.run_process(argv, env).check("upstream"),
                                    rounds=30, iterations=1, warmup_rounds=2)
    finally:
        pod.delete()
    assert b"-A OUTPUT -j ISTIO_OUTPUT" in result.stdout
    _keep(benchmark, "baseline-upstream-dry-run")
    if "rules-build-default" not in MEDIANS:
        pytest.fail("rules-build-default was not measured in this run; run the whole file")
    ours, upstream = MEDIANS["rules-build-default"], MEDIANS["baseline-upstream-dry-run"]
    benchmark.extra_info["ours_over_upstream"] = ours / upstream
    assert ours < upstream, f"in-process build {ours * 1e6:.0f} us >= upstream exec {upstream * 1e6:.0f} us"
