"""A fake primary CNI agent: rewrites its conflist (dropping foreign entries) on a cadence.

Run as a child process: ``python fake_primary.py FILE PERIOD_S DURATION_S``. After each rewrite
it waits (bounded) for the istio-cni entry to be put back, then prints one JSON summary line:
rewrites, how many were repaired, and the repair latencies in milliseconds.
"""

import json
import os
import sys
import time

CONF = {"name": "k8s-pod-network", "cniVersion": "0.3.1",
        "plugins": [{"type": "calico", "mtu": 1500}, {"type": "portmap", "snat": True}]}


def has_istio(path):
    try:
        with open(path) as f:
            return any(p.get("type") == "istio-cni" for p in json.load(f)["plugins"])
    except (OSError, ValueError, KeyError):
        return False


def rewrite(path):
    tmp = f"{path}.fake-primary.tmp"  # the way most agents write: temp + rename
    with open(tmp, "w") as f:
        json.dump(CONF, f, indent=2)
    os.replace(tmp, path)


def main():
    path, period, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    end = time.monotonic() + duration
    rewrites, repaired, lat = 0, 0, []
    while time.monotonic() < end:
        start = time.monotonic()
        rewrite(path)
        rewrites += 1
        deadline = start + 5.0
        while time.monotonic() < deadline:
            if has_istio(path):
                repaired += 1
                lat.append((time.monotonic() - start) * 1000)
                break
            time.sleep(0.0005)
        time.sleep(max(0.0, period - (time.monotonic() - start)))
    print(json.dumps({"rewrites": rewrites, "repaired": repaired, "latencies_ms": lat}), flush=True)


if __name__ == "__main__":
    main()
