# A fresh process committing the default rule set into a fresh netns, backend chosen by
# ``auto`` (libiptc there), after reading the netns' addresses, as the direct-path ADD does
# after its pod GET (plugin.plan -> netfilter.apply).
import sys
import time

from istio_cni import netfilter
from istio_cni.netfilter.routes import netns_addresses
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig

netns_addresses(sys.argv[1])
rs = build(RedirectConfig(outbound_ip_ranges_include="*"))
t0 = time.perf_counter()
backend = netfilter.apply(sys.argv[1], rs)
t1 = time.perf_counter()
assert backend == "iptc", backend
print(f"apply_ms={(t1 - t0) * 1e3:.3f}")
