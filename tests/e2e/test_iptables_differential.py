"""Differential tests: our rules against upstream ``istio-iptables --dry-run``.

Hypothesis generates valid configurations (derandomized, so every run checks the same 300+
examples); each one is rendered by upstream's binary, run inside a network namespace of ours
whose addresses decide IPv6 the way upstream detects it, with its own /etc/resolv.conf bound
in a private mount namespace (upstream reads the DNS servers from there). The same flags and
environment then go through our CLI parser and, separately, straight into RedirectConfig; both
must produce upstream's restore payloads exactly.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from peers.tools import tool_path

from istio_cni.rules.builder import build, build_xtables
from istio_cni.rules.config import RedirectConfig
from istio_cni.tools import iptables_cli, netns as nsutil

EXAMPLES = 300
FAMILIES = {
    "v4": ("192.0.2.10/24",),
    "v6": ("2001:db8::10/64",),
    "dual": ("192.0.2.10/24", "2001:db8::10/64"),
}
RESTORE_START = re.compile(r"Running iptables restore with: (\S+) and the following input:")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def upstream():
    return tool_path("istio-iptables")


@pytest.fixture(scope="module")
def namespaces():
    """One netns per address family mix; each holds a veth pair with its addresses."""
    made: dict[str, str] = {}
    try:
        for family, addrs in FAMILIES.items():
            name = nsutil.unique_name(f"dif{family}")
            nsutil.add(name)
            made[family] = name
            nsutil.ip("-n", name, "link", "set", "lo", "up")
            nsutil.ip("-n", name, "link", "add", "da", "type", "veth", "peer", "name", "db")
            for addr in addrs:
                extra = ("nodad",) if ":" in addr else ()
                nsutil.ip("-n", name, "addr", "add", addr, "dev", "da", *extra)
            nsutil.ip("-n", name, "link", "set", "da", "up")
        yield made
    finally:
        for name in made.values():
            nsutil.delete(name)


@pytest.fixture(scope="module")
def netns_addresses(namespaces):
    """What our CLI's address probe sees inside each namespace (run there for real)."""
    probe = "from istio_cni.tools.iptables_cli import local_addresses; print(' '.join(local_addresses()))"
    out = {}
    for family, name in namespaces.items():
        res = nsutil.exec_in(name, sys.executable, "-c", probe, capture_output=True, text=True,
                             timeout=30, check=True)
        out[family] = res.stdout.split()
    return out


def parse_upstream(stdout: str) -> dict[int, str]:
    """The iptables-restore / ip6tables-restore payloads upstream logs in dry-run mode."""
    payloads = {4: "", 6: ""}
    family, lines = None, []
    for line in stdout.splitlines() + ["0000-00-00T00:00:00 end"]:
        if family is not None and LOG_LINE.match(line):
            payloads[family] = "".join(f"{ln.rstrip()}\n" for ln in lines if ln.strip())
            family, lines = None, []
        match = RESTORE_START.search(line)
        if match:
            family = 6 if match.group(1).startswith("ip6tables") else 4
        elif family is not None:
            lines.append(line)
    return payloads


def run_upstream(binary: Path, netns: str, argv: list, env: dict, resolv: Path) -> dict:
    # `ip netns exec` already gives the command a private mount namespace; `unshare` makes
    # that explicit, so the bind mount of our resolv.conf can never reach the host.
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    cmd = ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
           "sh", "-c", script, str(resolv), str(binary), "--dry-run", *argv]
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    res = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"upstream failed ({res.returncode}): {res.stdout}{res.stderr}"
    return parse_upstream(res.stdout)


# ---- configuration generator -------------------------------------------------------------

ports = st.integers(1, 65535).map(str)
port_lists = st.lists(ports, max_size=3, unique=True)
ids = st.lists(st.integers(0, 70000).map(str), min_size=1, max_size=3, unique=True)
nics = st.lists(st.sampled_from(["eth0", "eth1", "net1", "vnet0", "ens3"]), max_size=2,
                unique=True)
v4_cidrs = st.one_of(
    st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "127.1.2.3/32", "0.0.0.0/0", "9.9.0.0/16"]),
    st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}/{p}", st.integers(1, 223),
              st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 32)),
)
v6_cidrs = st.one_of(
    st.sampled_from(["2001:db8::/32", "fd00::/8", "::1/128", "fd00:10::5/128", "::/0"]),
    st.builds(lambda a, b, p: f"fd{a:02x}:{b:x}::/{p}", st.integers(0, 255),
              st.integers(0, 65535), st.integers(8, 128)),
)
cidr_lists = st.lists(st.one_of(v4_cidrs, v6_cidrs), max_size=3, unique=True)
groups = st.lists(st.sampled_from(["java", "202", "ftp", "888", "1000", "www-data"]),
                  min_size=1, max_size=3, unique=True)
dns_v4 = st.lists(st.sampled_from(["10.96.0.10", "127.0.0.53", "192.0.2.53"]), max_size=2,
                  unique=True)
dns_v6 = st.lists(st.sampled_from(["2001:db8::53", "fd00::a", "::127.0.0.53"]), max_size=2,
                  unique=True)

# (field, long flag, short flag) for string settings passed either as flag or as env var.
STRING_SETTINGS = [
    ("proxy_port", "envoy-port", "p"),
    ("inbound_capture_port", "inbound-capture-port", "z"),
    ("inbound_tunnel_port", "inbound-tunnel-port", "e"),
    ("proxy_uids", "proxy-uid", "u"),
    ("proxy_gids", "proxy-gid", "g"),
    ("interception_mode", "istio-inbound-interception-mode", "m"),
    ("inbound_ports_include", "istio-inbound-ports", "b"),
    ("inbound_ports_exclude", "istio-local-exclude-ports", "d"),
    ("exclude_interfaces", "istio-exclude-interfaces", "c"),
    ("outbound_ip_ranges_include", "istio-service-cidr", "i"),
    ("outbound_ip_ranges_exclude", "istio-service-exclude-cidr", "x"),
    ("outbound_ports_include", "istio-outbound-ports", "q"),
    ("outbound_ports_exclude", "istio-local-outbound-ports-exclude", "o"),
    ("reroute_virtual_interfaces", "kube-virt-interfaces", "k"),
    ("inbound_tproxy_mark", "istio-inbound-tproxy-mark", "t"),
    ("inbound_tproxy_route_table", "istio-inbound-tproxy-route-table", "r"),
]
BOOL_SETTINGS = [
    ("redirect_dns", "redirect-dns", "ISTIO_META_DNS_CAPTURE"),
    ("capture_all_dns", "capture-all-dns", None),
    ("drop_invalid", "drop-invalid", "INVALID_DROP"),
    ("dual_stack", "dual-stack", "ISTIO_DUAL_STACK"),
]


def joined(strategy):
    return strategy.map(",".join)


@st.composite
def scenarios(draw):
    """A valid configuration, how to spell it for upstream, and what it means."""
    values = {
        "proxy_port": draw(st.none() | ports),
        "inbound_capture_port": draw(st.none() | ports),
        "inbound_tunnel_port": draw(st.none() | ports),
        "proxy_uids": draw(joined(ids)),  # always given: upstream's default reads /etc/passwd
        "proxy_gids": draw(st.none() | joined(ids)),
        "interception_mode": draw(st.sampled_from([None, "REDIRECT", "TPROXY"])),
        "inbound_ports_include": draw(st.sampled_from(["", "*"]) | joined(port_lists)),
        "inbound_ports_exclude": draw(joined(port_lists)),
        "exclude_interfaces": draw(joined(nics)),
        "outbound_ip_ranges_include": draw(st.sampled_from(["", "*"]) | joined(cidr_lists)),
        "outbound_ip_ranges_exclude": draw(joined(cidr_lists)),
        "outbound_ports_include": draw(joined(port_lists)),
        "outbound_ports_exclude": draw(joined(port_lists)),
        "reroute_virtual_interfaces": draw(joined(nics)),
        "inbound_tproxy_mark": draw(st.none() | st.integers(1, 2**31).map(str)),
        "inbound_tproxy_route_table": draw(st.none() | st.integers(1, 5000).map(str)),
    }
    bools = {field: draw(st.booleans()) for field, _flag, _env in BOOL_SETTINGS}
    include = draw(st.sampled_from([None, "*"]) | joined(groups))
    exclude = draw(joined(groups)) if include in (None, "*") and draw(st.booleans()) else None
    loopback = draw(st.sampled_from([None, "127.0.0.1/32", "127.0.0.1/8", "127.0.0.0/8",
                                     "127.10.0.1/32"]))
    family = draw(st.sampled_from(sorted(FAMILIES)))
    servers = (draw(dns_v4), draw(dns_v6))

    argv, env = [], {}
    for field, flag, short in STRING_SETTINGS:
        value = values[field]
        if value is None or (value == "" and draw(st.booleans())):
            continue
        how = draw(st.sampled_from(["long", "short", "env"] if flag != "envoy-port"
                                   else ["long", "short"]))
        if how == "env":
            env[iptables_cli.env_name(flag)] = value
        else:
            argv += [f"--{flag}={value}"] if how == "long" else [f"-{short}", value]
    for field, flag, fallback in BOOL_SETTINGS:
        if not bools[field]:
            continue
        how = draw(st.sampled_from(["flag", "env"] + (["fallback"] if fallback else [])))
        if how == "flag":
            argv.append(f"--{flag}")
        else:
            env[fallback if how == "fallback" else iptables_cli.env_name(flag)] = "true"
    if include is not None:
        env["ISTIO_OUTBOUND_OWNER_GROUPS"] = include
    if exclude is not None:
        env["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"] = exclude
    if loopback is not None:
        env["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"] = loopback

    reads_resolv = bools["redirect_dns"] and not bools["capture_all_dns"]
    expected = {k: v for k, v in values.items() if v is not None and v != ""}
    expected.update(bools)
    expected["owner_groups_include"] = include or "*"
    expected["owner_groups_exclude"] = exclude or ""
    expected["host_ipv4_loopback_cidr"] = loopback or "127.0.0.1/32"
    expected["enable_ipv6"] = family == "v6" or (family == "dual" and bools["dual_stack"])
    # Upstream reads resolv.conf through netip, which prints addresses canonically.
    canonical = tuple(tuple(str(ipaddress.ip_address(s)) for s in fam) for fam in servers)
    expected["dns_servers_v4"], expected["dns_servers_v6"] = (
        canonical if reads_resolv else ((), ()))
    resolv = "".join(f"nameserver {s}\n" for s in servers[0] + servers[1]) + "search cluster.local\n"
    return {"argv": argv, "env": env, "family": family, "resolv": resolv, "expected": expected}


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=scenarios())
def test_rules_match_upstream(upstream, namespaces, netns_addresses, tmp_path, case):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(case["resolv"])
    want = run_upstream(upstream, namespaces[case["family"]], case["argv"], case["env"], resolv)
    context = f"argv={case['argv']} env={case['env']} family={case['family']}"

    cfg = RedirectConfig(**case["expected"])
    direct = build_xtables(cfg)
    assert direct.restore_text(4) == want[4], context
    assert direct.restore_text(6) == want[6], context
    # What the plugin calls: the same x_tables view plus the native-nftables tables.
    assert build(cfg).replace(nft=()) == direct, context

    # The CLI path: flag/env resolution, IPv6 detection, resolv.conf parsing.
    opts = iptables_cli.parse_options(case["argv"], case["env"])
    ipv6 = iptables_cli.ipv6_enabled(netns_addresses[case["family"]], opts.flag("dual-stack"))
    servers = iptables_cli.resolv_conf_servers(case["resolv"])
    via_cli = build_xtables(iptables_cli.config_from_options(opts, ipv6, servers))
    assert via_cli == direct, context


README_EXAMPLE = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                  "-x", "10.96.0.0/12", "-b", "*", "-d", "15090,15021,15020"]


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_cli_dry_run_prints_upstreams_rules(upstream, namespaces, tmp_path, family):
    """`istio-iptables --dry-run` (the console script, in the pod netns) == upstream's."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\n")
    want = run_upstream(upstream, namespaces[family], README_EXAMPLE + ["--redirect-dns"], {},
                        resolv)
    ours = Path(sys.executable).with_name("istio-iptables")
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    res = subprocess.run(
        ["ip", "netns", "exec", namespaces[family], "unshare", "--mount", "--propagation",
         "private", "sh", "-c", script, str(resolv), str(ours), "--dry-run", *README_EXAMPLE,
         "--redirect-dns"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
    )
    assert res.returncode == 0, res.stderr
    sections = re.split(r"^# ip6?tables-restore --noflush\n", res.stdout, flags=re.M)
    assert sections[0] == ""
    assert sections[1] == want[4]
    assert (sections[2] if len(sections) > 2 else "") == want[6]
    assert bool(want[6]) == (family == "v6")


def _numeric_groups(groups_: tuple) -> tuple:
    # Group names are resolved through NSS when the rule is loaded; this host need not
    # know "java" or "ftp", so the load test maps names to gids that need no lookup.
    return tuple(g if g == "*" or g.isdigit() else str(2000 + len(g)) for g in groups_)


@pytest.mark.parametrize("flavour", ["legacy", "nft"])
@settings(max_examples=25, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=scenarios())
def test_kernel_accepts_the_payloads(flavour, case):
    """Every generated rule set loads with iptables-restore (legacy and nft) in a fresh
    netns, and the kernel then holds exactly as many rules as we rendered."""
    cfg = RedirectConfig(**case["expected"])
    cfg = cfg.replace(owner_groups_include=_numeric_groups(cfg.owner_groups_include),
                      owner_groups_exclude=_numeric_groups(cfg.owner_groups_exclude))
    rules = build_xtables(cfg)
    with nsutil.temporary("load") as name:
        for family, tool in ((4, "iptables"), (6, "ip6tables")):
            payload = rules.restore_text(family)
            if not payload:
                continue
            res = nsutil.exec_in(name, f"{tool}-{flavour}-restore", "--noflush",
                                 input=payload, timeout=30)
            assert res.returncode == 0, f"{res.stderr}\n{payload}"
            saved = nsutil.exec_in(name, f"{tool}-{flavour}-save", timeout=30, check=True).stdout
            loaded = sum(line.startswith("-A ") for line in saved.splitlines())
            ours = sum(len(t.rules) for t in (rules.v4 if family == 4 else rules.v6))
            assert loaded == ours, saved


def _pod_netns(name: str) -> None:
    nsutil.ip("-n", name, "link", "add", "da", "type", "veth", "peer", "name", "db")
    nsutil.ip("-n", name, "addr", "add", "192.0.2.10/24", "dev", "da")
    nsutil.ip("-n", name, "link", "set", "da", "up")


def _validation(name: str, timeout: str) -> subprocess.CompletedProcess:
    ours = Path(sys.executable).with_name("istio-iptables")
    return nsutil.exec_in(name, str(ours), "--run-validation", "--skip-rule-apply", "-u", "0",
                          "--probe-timeout", timeout, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})


def test_validation_passes_once_the_rules_are_in_place():
    """--run-validation (the istio-validation init container) sees its probe redirected.
    The rules treat uid 0 as the proxy, since this test's processes run as root."""
    with nsutil.temporary("vld") as name:
        _pod_netns(name)
        payload = build_xtables(RedirectConfig(proxy_uids="0", inbound_ports_include="*",
                                               outbound_ip_ranges_include="*")).restore_text(4)
        nsutil.exec_in(name, "iptables-nft-restore", "--noflush", input=payload, timeout=30,
                       check=True)
        res = _validation(name, "20s")
    assert res.returncode == 0, res.stderr
    assert "validation passed" in res.stderr


def test_validation_fails_with_126_without_rules():
    with nsutil.temporary("vld") as name:
        _pod_netns(name)
        res = _validation(name, "1500ms")
    assert res.returncode == 126, res.stderr
    assert "iptables validation failed" in res.stderr


def _cli(*argv: str) -> subprocess.CompletedProcess:
    ours = Path(sys.executable).with_name("istio-iptables")
    return subprocess.run([str(ours), *argv], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})


@pytest.mark.parametrize("binary, save", [("legacy", "iptables-legacy-save"),
                                          ("nft", "iptables-nft-save")])
def test_cli_commits_idempotently_and_cleans_up(binary, save):
    """Without --dry-run the CLI commits through istio_cni.netfilter into the named netns:
    the kernel then holds our rules, a second run does not duplicate them, and
    --cleanup-only removes every ISTIO_* chain and jump."""
    argv = ["-u", "1337", "-b", "*", "-i", "*", "-x", "10.96.0.0/12",
            f"--force-iptables-binary={binary}"]
    want = sum(len(t.rules) for t in build_xtables(RedirectConfig(
        proxy_uids="1337", inbound_ports_include="*", outbound_ip_ranges_include="*",
        outbound_ip_ranges_exclude="10.96.0.0/12")).v4)

    def rules_in(name: str) -> list[str]:
        out = nsutil.exec_in(name, save, timeout=30, check=True).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    with nsutil.temporary("cli") as name:
        _pod_netns(name)
        for _ in range(2):
            res = _cli(*argv, "--network-namespace", name)
            assert res.returncode == 0, res.stderr
            assert len(rules_in(name)) == want
        res = _cli("--cleanup-only", f"--force-iptables-binary={binary}",
                   "--network-namespace", nsutil.path(name))
        assert res.returncode == 0, res.stderr
        assert not [r for r in rules_in(name) if "ISTIO" in r]
