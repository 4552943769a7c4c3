"""The netfilter package is on the plugin's ADD path: it must keep the import budget."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("dataclasses", "typing", "logging", "json", "kubernetes", "pyroute2", "subprocess",
             "re", "http.client", "socket", "hashlib", "threading", "ipaddress",
             "istio_cni._nft")  # libnftables: loaded by the nft backend only, when it runs

PROBE = """
import sys
before = set(sys.modules)
import istio_cni.netfilter, istio_cni.netfilter.iptc, istio_cni.netfilter.nft
import istio_cni.netfilter.routes, istio_cni.netfilter.detect, istio_cni.netfilter.restore
import istio_cni.netfilter.dryrun
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_netfilter_imports_stay_lean():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    assert not set(FORBIDDEN) & set(out), sorted(set(FORBIDDEN) & set(out))
