"""The compiled rule encoder (``_nf_xtenc.c``) against the Python one, for every golden rule.

Pure encoding, no root, no netns: this is the check `make wheel` runs for the aarch64 wheel
under qemu-user, where struct layouts, alignment and integer widths are the other
architecture's. Both encoders take their offsets from the compiled ``_nf`` module, but the C
encoder writes fields itself; an entry that differs by one byte would reach the kernel as a
different rule (or be refused). So, for each rule of every upstream istio-iptables golden,
IPv4 and IPv6:

* when the compiled path accepts the rule, its entry equals ``xtenc.encode(xt.parse(spec))``
  byte for byte, and its identity (what ``check`` and the clearing walk compare) is the same;
* when Python refuses the rule (an owner name this machine lacks), the compiled path declines;
* the batch call and the one-rule call agree;
* most golden rules take the compiled path (so the comparison is not vacuous).

The wider corpus (builder variants, edge cases around the subset's borders, rejects) is in
tests/integration/test_netfilter_xtenc_compiled.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from nf_goldens import iptables_cases, iptables_tables  # noqa: E402

from istio_cni.netfilter import xt, xtenc  # noqa: E402


def _golden_rules(conformance, case: str) -> dict:
    """{family: [spec, ...]} of one golden, in file order."""
    v4, v6 = iptables_tables(conformance / "istio-iptables" / "golden" / f"{case}.golden")
    return {4: [r.spec for t in v4 for r in t.rules], 6: [r.spec for t in v6 for r in t.rules]}


def test_goldens_are_present(conformance):
    assert len(iptables_cases(conformance)) >= 20


def test_every_golden_rule_encodes_identically(conformance):
    compared = declined = rejected = 0
    for case in iptables_cases(conformance):
        for family, specs in _golden_rules(conformance, case).items():
            if not specs:
                continue
            compiled = xtenc.encode_specs(specs, family)
            for spec, entry in zip(specs, compiled, strict=True):
                assert entry == xtenc.encode_spec(spec, family), (case, family, spec)
                try:
                    parsed = xt.parse(spec, family)
                except xt.XtParseError:
                    # e.g. an owner group this machine does not have: Python refuses, so
                    # the compiled path must have declined (the error reaches the caller)
                    assert entry is None, (case, family, spec)
                    rejected += 1
                    continue
                if entry is None:
                    declined += 1
                    continue
                ref = xtenc.encode(parsed)
                assert entry == ref, (case, family, spec, entry.hex(), ref.hex())
                assert xtenc.identity_of_entry(entry, family) == xtenc.identity(parsed), (
                    case, family, spec)
                compared += 1
    # The goldens are what the plugin commits: most of it goes through the C path (the rest,
    # CT / MARK / TPROXY / mark / conntrack / multiport shapes, is Python's by design), so a
    # compiled path that declined everything would fail here rather than compare nothing.
    assert compared >= 3 * (declined + rejected), (compared, declined, rejected)


@pytest.mark.parametrize("family,head,at", [(4, 112, 88), (6, 168, 140)])
def test_entry_layout_follows_the_x_tables_abi(family, head, at):
    """Entry head size and where target_offset / next_offset sit, from the ABI rather than
    from ``_nf`` (every architecture the wheels target is LP64 with 8-byte aligned u64
    counters: ipt_entry is 112 bytes with target_offset at 88, ip6t_entry 168 at 140)."""
    entry = xtenc.encode_spec(("-p", "tcp", "--dport", "15008", "-j", "RETURN"), family)
    assert entry is not None
    target_offset = int.from_bytes(entry[at:at + 2], "little")
    next_offset = int.from_bytes(entry[at + 2:at + 4], "little")
    # the head, the tcp match (32-byte header + 12-byte xt_tcp padded to 16), the 40-byte
    # standard target
    assert (target_offset, next_offset, len(entry)) == (head + 48, head + 88, head + 88)
