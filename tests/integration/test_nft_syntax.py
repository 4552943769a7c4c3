"""The real ``nft`` accepts every transaction we render, inside a throwaway netns.

``nft -c -f -`` parses the text and sends the batch to the kernel in check mode (the kernel
validates expressions, hooks and priorities, then aborts), so this catches what a string
comparison with upstream's goldens cannot: a typo both sides share, a statement the local
kernel lacks. One case is also applied for real, twice, to prove the add/flush preamble
makes a second commit replace the first instead of duplicating it.

Group names (``skgid java``) are resolved by nft in user space against the filesystem it
runs in: the node's /etc/group in the CNI plugin, since only the network namespace is the
pod's. An unknown name fails the whole transaction (fail closed). The owner-group goldens
use names this machine lacks (java, ftp), so those cases run nft in a private mount
namespace whose /etc/group has them added; the host's file is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from rules_cases import NFTABLES_CASES, config_for  # noqa: E402

from istio_cni.rules.model import RuleSet  # noqa: E402
from istio_cni.rules.nft_builder import build_nft  # noqa: E402
from istio_cni.tools import netns as nsutil  # noqa: E402


@pytest.fixture(scope="module")
def nft_bin() -> str:
    path = shutil.which("nft")
    if path is None:
        pytest.fail("nft not installed: run `make setup` (Debian package nftables)")
    return path


def _nft(ns: str, nft_bin: str, *args: str, stdin: str = "",
         group_file: Path | None = None) -> subprocess.CompletedProcess:
    if group_file is None:
        return nsutil.exec_in(ns, nft_bin, *args, input=stdin, timeout=30)
    # unshare --mount gives private propagation: the bind mount dies with the process.
    script = 'mount --bind "$0" /etc/group && exec ip netns exec "$1" "$2" "${@:3}"'
    return subprocess.run(
        ["unshare", "--mount", "bash", "-c", script, str(group_file), ns, nft_bin, *args],
        input=stdin, capture_output=True, text=True, timeout=30,
    )


def _group_file_with(names: list[str], tmp_path: Path) -> Path:
    """A copy of /etc/group plus ``names`` with gids nobody on this machine uses."""
    lines = Path("/etc/group").read_text().splitlines()
    taken = {int(line.split(":")[2]) for line in lines if line.count(":") >= 3}
    free = (gid for gid in range(61000, 62000) if gid not in taken)
    lines += [f"{name}:x:{next(free)}:" for name in names]
    path = tmp_path / "group"
    path.write_text("\n".join(lines) + "\n")
    return path


def _group_names(cfg) -> list[str]:
    groups = cfg.owner_groups_include + cfg.owner_groups_exclude
    return [g for g in groups if g != "*" and not g.isdigit()]


@pytest.mark.parametrize("case", sorted(NFTABLES_CASES))
def test_nft_accepts_transaction(case, netns, nft_bin, tmp_path):
    ns = netns("nftc")
    cfg = config_for(case)
    names = _group_names(cfg)
    group_file = _group_file_with(names, tmp_path) if names else None
    text = RuleSet(nft=build_nft(cfg)).nft_text()
    res = _nft(ns, nft_bin, "-c", "-f", "-", stdin=text, group_file=group_file)
    assert res.returncode == 0, f"nft rejected {case}:\n{res.stderr}\n--- transaction ---\n{text}"


def test_commit_twice_replaces_rules(netns, nft_bin):
    ns = netns("nftc")
    text = RuleSet(nft=build_nft(config_for("tproxy"))).nft_text()
    expected_rules = text.count("add rule") + text.count("insert rule")
    for _ in range(2):
        res = _nft(ns, nft_bin, "-f", "-", stdin=text)
        assert res.returncode == 0, res.stderr
    listing = _nft(ns, nft_bin, "-a", "list", "ruleset")
    assert listing.returncode == 0, listing.stderr
    # Every rule carries a counter, so counting "counter packets" counts rules in the kernel.
    assert listing.stdout.count("counter packets") == expected_rules
    tables = {line.split()[2] for line in listing.stdout.splitlines() if line.startswith("table ")}
    assert tables == {"istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"}


def test_unknown_group_name_fails_the_transaction(netns, nft_bin, tmp_path):
    # Fail closed: a name the node cannot resolve rejects the whole commit, nothing half-done.
    from istio_cni.rules.config import RedirectConfig

    ns = netns("nftc")
    missing = "icni-no-such-group"
    group_file = _group_file_with([], tmp_path)  # this machine's groups, unchanged
    assert f"\n{missing}:" not in "\n" + group_file.read_text()
    text = RuleSet(nft=build_nft(RedirectConfig(owner_groups_include=f"202,{missing}"))).nft_text()
    res = _nft(ns, nft_bin, "-c", "-f", "-", stdin=text, group_file=group_file)
    assert res.returncode != 0
    assert "Group does not exist" in res.stderr


def _plugin_cases():
    from test_plugin_golden import CASES, STATUS_PORT_ANNOTATIONS, make_pod

    pods = {case: make_pod(a, env, sec) for case, (_, a, env, sec) in CASES.items()}
    pods["status-ports"] = make_pod(STATUS_PORT_ANNOTATIONS)
    pods["dns-ipv6-dual-stack"] = make_pod({}, {"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_DUAL_STACK": "true"})
    return pods


PLUGIN_PODS = _plugin_cases()


@pytest.mark.parametrize("case", sorted(PLUGIN_PODS))
def test_nft_accepts_plugin_pods(case, netns, nft_bin):
    # What the plugin itself would commit in native-nftables mode: annotation layer first
    # (capture-all DNS, TPROXY, custom ids), IPv6 on so both families' rules are checked.
    from istio_cni.redirect import redirect_from_pod

    ns = netns("nftc")
    cfg = redirect_from_pod(PLUGIN_PODS[case], addresses=("169.254.10.2/24", "fd00::a:2/64"))
    text = RuleSet(nft=build_nft(cfg)).nft_text()
    res = _nft(ns, nft_bin, "-c", "-f", "-", stdin=text)
    assert res.returncode == 0, f"nft rejected {case}:\n{res.stderr}\n--- transaction ---\n{text}"
