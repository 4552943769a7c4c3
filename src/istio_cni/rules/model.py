"""The rule set as a pure value: what to program into one pod network namespace.

This is the contract between the rule builder (``rules.builder``) and every netfilter
backend (``netfilter.*``): the builder never touches the kernel, backends never decide
policy. Two views of the same redirect are carried side by side:

* ``v4`` / ``v6``: x_tables tables for libiptc and ``iptables-restore``. Each rule keeps
  upstream ``istio-iptables``' own token spelling (``-p tcp --dport 15008 -j RETURN``), so the
  restore payload renders byte-for-byte like upstream's goldens; backends parse the tokens.
* ``nft``: inet tables for the native nftables mode (upstream ``istio-nftables``), as the
  ``nft -f`` statements upstream emits.

``routes`` is the policy routing TPROXY needs (``ip rule fwmark M lookup T`` plus a local
default route in ``T``) and ``lo_addresses`` the addresses put on ``lo`` (``::6/128``, the
source of Envoy's IPv6 inbound passthrough, when IPv6 is on); both are data here and
programmed over netlink after the rules, as upstream's ``tproxy.ConfigureRoutes`` does.
"""

from __future__ import annotations

from ..value import Value


class Rule(Value):
    """One ``-A CHAIN <spec>`` (append) or ``-I CHAIN <insert_at> <spec>`` (insert)."""

    __slots__ = ("chain", "spec", "insert_at")
    _defaults = {"insert_at": None}
    chain: str
    spec: tuple[str, ...]
    insert_at: int | None  # 1-based position as in ``iptables -I``; None appends

    def render(self) -> str:
        head = f"-A {self.chain}" if self.insert_at is None else f"-I {self.chain} {self.insert_at}"
        return f"{head} {' '.join(self.spec)}" if self.spec else head


class Table(Value):
    """One x_tables table: the chains we own (created with ``-N``) and our rules in order.

    ``rules`` may target built-in chains (``PREROUTING``, ``OUTPUT``); those are the jumps
    into our chains and must be replaced, never duplicated, on a second commit.
    """

    __slots__ = ("name", "chains", "rules")
    name: str  # "nat" | "mangle" | "raw" | "filter"
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]

    def render(self) -> str:
        """The ``iptables-restore`` payload for this table (``* name`` ... ``COMMIT``)."""
        lines = [f"* {self.name}"]
        lines += [f"-N {c}" for c in self.chains]
        lines += [r.render() for r in self.rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


class PolicyRoute(Value):
    """TPROXY's routing: ``ip [-6] rule add fwmark <mark> lookup <table>`` and
    ``ip [-6] route add local default dev lo table <table>``."""

    __slots__ = ("family", "fwmark", "table")
    family: int  # 4 or 6
    fwmark: int
    table: int


class NftChain(Value):
    """A chain in an inet table; base chains carry type/hook/priority."""

    __slots__ = ("name", "type", "hook", "priority")
    _defaults = {"type": None, "hook": None, "priority": None}
    name: str
    type: str | None  # "nat" | "filter" | "route"
    hook: str | None  # "prerouting" | "output" | ...
    priority: int | None


class NftTable(Value):
    """One inet table of the native nftables mode and its rule statements in order.

    ``statements`` are complete ``nft -f`` lines (``add rule inet <table> <chain> ...`` or
    ``insert rule inet <table> <chain> index N ...``), exactly as upstream emits them.
    """

    __slots__ = ("name", "chains", "statements")
    name: str  # e.g. "istio-proxy-nat"
    chains: tuple[NftChain, ...]
    statements: tuple[str, ...]

    def render(self) -> str:
        lines = [f"add table inet {self.name}", f"flush table inet {self.name}"]
        for c in self.chains:
            if c.hook is None:
                lines.append(f"add chain inet {self.name} {c.name}")
            else:
                lines.append(
                    f"add chain inet {self.name} {c.name} {{ type {c.type} hook {c.hook} priority {c.priority} ; }}"
                )
        lines += self.statements
        return "\n".join(lines) + "\n"


class RuleSet(Value):
    """Everything one ADD programs into a pod netns. Empty tuples mean "nothing of that kind"."""

    __slots__ = ("v4", "v6", "routes", "nft", "lo_addresses")
    _defaults = {"v4": (), "v6": (), "routes": (), "nft": (), "lo_addresses": ()}
    v4: tuple[Table, ...]
    v6: tuple[Table, ...]
    routes: tuple[PolicyRoute, ...]
    nft: tuple[NftTable, ...]
    lo_addresses: tuple[str, ...]  # "address/prefix" strings added to lo

    def restore_text(self, family: int = 4) -> str:
        """The ``iptables-restore`` (family 4) or ``ip6tables-restore`` (6) payload."""
        return "".join(t.render() for t in (self.v4 if family == 4 else self.v6))

    def nft_text(self) -> str:
        """The whole native-nftables transaction as one ``nft -f`` script."""
        return "".join(t.render() for t in self.nft)
