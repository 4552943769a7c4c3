"""``auto`` never fails an ADD that nf_tables would pass: when libiptc cannot init a legacy
table the kernel lacks (``iptc_init("nat")`` -> ENOENT & co.), the commit goes through
nf_tables with one warning naming why; an explicit backend fails closed. The kernel is never
touched here: libiptc's init is replaced by one that fails, the nf_tables backend by a recorder.
"""

from __future__ import annotations

import errno
import io
import json

import pytest

from istio_cni import netfilter
from istio_cni.errors import NetfilterError
from istio_cni.log import log
from istio_cni.netfilter import iptc
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig

RS = build(RedirectConfig(outbound_ip_ranges_include="*"))
XT_ONLY = RS.replace(nft=())
FALLBACK_MSG = "legacy x_tables unusable in this netns; committing through nf_tables"


class FailingInitLib:
    """The real libiptc binding, except that ``init`` of ``table`` fails with ``err``."""

    def __init__(self, real, table: bytes, err: int) -> None:
        self.real, self.table, self.err = real, table, err

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def init(self, table: bytes):
        if table == self.table:
            self.real.ffi.errno = self.err
            return self.real.ffi.NULL
        raise AssertionError(f"unexpected iptc_init({table!r}) in a unit test")

    def error(self, what: str):
        return type(self.real).error(self, what)


class Recorder:
    def __init__(self, name: str) -> None:
        self.name, self.committed = name, []

    def commit(self, rs) -> None:
        self.committed.append(rs)


@pytest.fixture
def no_nat(monkeypatch):
    """libiptc whose nat table is missing (ENOENT, "Table does not exist"); nothing live."""
    real = iptc._lib

    def fake(family: int):
        return FailingInitLib(real(family), b"nat", monkeypatch.fail_errno)

    monkeypatch.fail_errno = errno.ENOENT
    monkeypatch.setattr(iptc, "_lib", fake)
    monkeypatch.setattr(iptc, "live_tables", lambda family: set())
    monkeypatch.delenv(netfilter.ENV, raising=False)
    return monkeypatch


@pytest.fixture
def made(monkeypatch):
    """Backends built by ``make_backend``: iptc is real, the others record their commit."""
    out: dict = {}
    real = netfilter.make_backend

    def make(name, sink=None, long_lived=False):
        out[name] = real(name, sink, long_lived) if name == "iptc" else Recorder(name)
        return out[name]

    monkeypatch.setattr(netfilter, "make_backend", make)
    return out


@pytest.fixture
def logged(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    monkeypatch.setattr(log, "sinks", [])
    monkeypatch.setattr(log, "level", 10)
    return lambda: [json.loads(ln) for ln in stream.getvalue().splitlines()]


def default_choice(monkeypatch):
    monkeypatch.setattr(netfilter, "choose", lambda preferred="auto", rs=None:
                        ("iptc", "netns holds no rules: default"))


def test_auto_falls_back_to_nft_when_the_nat_table_is_missing(no_nat, made, logged):
    default_choice(no_nat)
    backend = netfilter.commit(RS)
    assert backend.name == "nft" and made["nft"].committed == [RS]
    warnings = [ln for ln in logged() if ln["msg"] == FALLBACK_MSG]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warn" and warnings[0]["backend"] == "nft"
    assert "init of table nat" in warnings[0]["reason"] and "errno 2" in warnings[0]["reason"]


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENOPROTOOPT, errno.EAFNOSUPPORT])
def test_every_missing_table_errno_falls_back(no_nat, made, logged, err):
    default_choice(no_nat)
    no_nat.fail_errno = err
    assert netfilter.commit(RS).name == "nft"


def test_rule_set_without_the_nft_form_falls_back_to_iptables_nft_restore(no_nat, made, logged):
    default_choice(no_nat)
    assert netfilter.commit(XT_ONLY).name == "restore-nft"
    assert made["restore-nft"].committed == [XT_ONLY]


def test_auto_chosen_for_legacy_rules_still_falls_back(no_nat, made, logged):
    # The netns holds legacy filter rules, but the kernel offers no legacy nat table.
    no_nat.setattr(netfilter, "choose", lambda preferred="auto", rs=None:
                   ("iptc", "netns holds 3 legacy x_tables rules"))
    assert netfilter.commit(RS).name == "nft"


@pytest.mark.parametrize("how", ["config", "env"])
def test_explicit_iptc_fails_closed(no_nat, made, logged, how):
    if how == "env":
        no_nat.setenv(netfilter.ENV, "iptc")
    with pytest.raises(iptc.TableUnavailable, match="init of table nat") as e:
        netfilter.commit(RS, "iptc" if how == "config" else "auto")
    assert e.value.code == NetfilterError.code and e.value.errno == errno.ENOENT
    assert set(made) == {"iptc"}
    assert not [ln for ln in logged() if ln["msg"] == FALLBACK_MSG]


def test_other_init_failures_do_not_fall_back(no_nat, made, logged):
    default_choice(no_nat)
    no_nat.fail_errno = errno.EPERM  # a permission problem: nf_tables would not fare better
    with pytest.raises(NetfilterError) as e:
        netfilter.commit(RS)
    assert not isinstance(e.value, iptc.TableUnavailable) and e.value.errno == errno.EPERM
    assert set(made) == {"iptc"}
