"""Before/after of one lever on a whole direct-path ADD, interleaved round by round.

Runs the plugin's entry point (``istio_cni.__main__.main``, as the bundle's launcher does:
``python -I -S -c``) from two source trees (``--before``/``--after``: directories holding the
``istio_cni`` package with its compiled modules built in place) against the same fake API
server over TLS (CA inline in a JSON kubeconfig, token auth, as the installer writes it),
each ADD into its own fresh pod netns (made untimed: a veth with the pod's address), backend
``auto`` (libiptc there). The order alternates every round; the rules are checked after
every ADD. Prints per tree the medians of the whole process (spawn to reap) and of its peak
RSS (``/usr/bin/time -f %M``, as bench_add.py's rss-direct does). Root; from the repo root:

    .venv/bin/python benchmarks/lever_add.py --before /tmp/before/src --after src --rounds 30

``--skip`` ADDs a pod without a sidecar instead (no rules; the pod GET and decision only).
``--importtime N`` also runs each tree's ADD N more times with ``-X importtime`` and prints
the median import self-time per module (the modules one tree imports and the other not first).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests")]

# The launcher's program with the tree first on sys.path (TREE and SITE are substituted).
CODE = "import os,sys;sys.path[:0]=[TREE,SITE];from istio_cni.__main__ import main;main()"
if os.environ.get("LEVER_ADD_CODE"):  # a probe variant of the entry, same placeholders
    CODE = open(os.environ["LEVER_ADD_CODE"]).read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--skip", action="store_true", help="a pod without a sidecar (no rules)")
    ap.add_argument("--importtime", type=int, default=0, metavar="N")
    a = ap.parse_args()

    from peers.fakeapi import FakeAPI
    from support.pods import plain_pod, sidecar_pod

    from istio_cni.tools import netns as nsutil

    python = os.path.realpath(sys.executable)
    site = sysconfig.get_paths()["purelib"]
    trees = {"before": os.path.abspath(a.before), "after": os.path.abspath(a.after)}
    results: dict = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="lever-add-") as tmp:
        tmp_path = Path(tmp)
        with FakeAPI(tls_dir=tmp_path / "tls", token="t0ken") as api:
            api.add_pod(plain_pod("web") if a.skip else sidecar_pod("web"))
            assert api.ca_file is not None
            ca = base64.b64encode(Path(api.ca_file).read_bytes()).decode()
            kc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
                  "clusters": [{"name": "k", "cluster": {"server": api.url, "certificate-authority-data": ca}}],
                  "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                  "users": [{"name": "u", "user": {"token": "t0ken"}}]}
            kc_path = tmp_path / "kubeconfig"
            kc_path.write_text(json.dumps(kc))
            conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
                    "kubernetes": {"kubeconfig": str(kc_path)},
                    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                                   "ips": [{"address": "192.0.2.2/24"}]}}
            stdin = json.dumps(conf).encode()
            imports: dict = {"before": [], "after": []}
            for i in range(a.rounds + a.importtime):
                timing = i >= a.rounds
                order = ("before", "after") if i % 2 == 0 else ("after", "before")
                for which in order:
                    with nsutil.temporary("lvpod") as pod_ns, nsutil.temporary("lvnode") as node_ns:
                        nsutil.veth_pair(pod_ns, node_ns, "192.0.2.2/24", "192.0.2.1/24")
                        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD",
                               "CNI_CONTAINERID": f"cid{i}", "CNI_NETNS": nsutil.path(pod_ns),
                               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
                               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
                        cmd = ["/usr/bin/time", "-f", "%M", python, *(["-X", "importtime"] if timing else []),
                               "-I", "-S", "-c", CODE.replace("TREE", repr(trees[which])).replace("SITE", repr(site))]
                        t0 = time.monotonic()
                        r = subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=60)
                        wall = (time.monotonic() - t0) * 1e3
                        if r.returncode != 0:
                            sys.exit(f"{which}: ADD failed: {r.stdout[-500:]!r} {r.stderr[-1500:]!r}")
                        rules = nsutil.exec_in(pod_ns, "iptables-legacy-save", "-t", "nat").stdout
                        if a.skip == ("ISTIO_OUTPUT" in rules):
                            sys.exit(f"{which}: unexpected rules after the ADD: {rules[:300]!r}")
                        rss = int(r.stderr.decode().strip().splitlines()[-1])
                        if timing:
                            imports[which].append(_import_times(r.stderr.decode()))
                        else:
                            results[which].append((wall, rss))
    kind = "skipped pod (no sidecar)" if a.skip else "redirected pod (libiptc, auto)"
    print(f"direct-path ADD, {kind}, TLS fake API, {a.rounds} interleaved rounds, medians")
    for which in ("before", "after"):
        walls = [w for w, _ in results[which]]
        rss = [r for _, r in results[which]]
        print(f"{which:6} wall {statistics.median(walls):6.2f} ms  peak RSS {statistics.median(rss) / 1024:5.2f} MiB "
              f"(max {max(rss) / 1024:5.2f})")
    if a.importtime:
        _print_imports(imports)
    return 0


def _import_times(stderr: str) -> dict:
    """``-X importtime`` lines -> {module: self time in us}."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _cum, name = line[len("import time:"):].split("|")
            out[name.strip()] = int(self_us)
    return out


def _print_imports(imports: dict) -> None:
    med = {}
    for which, runs in imports.items():
        names = set().union(*runs)
        med[which] = {n: statistics.median(r.get(n, 0) for r in runs) for n in names}
    for which in ("before", "after"):
        total = sum(med[which].values()) / 1000
        print(f"{which:6} imports: {len(med[which])} modules, sum of median self times {total:.2f} ms")
    only_b = sorted(set(med["before"]) - set(med["after"]))
    only_a = sorted(set(med["after"]) - set(med["before"]))
    print("only before:", " ".join(f"{n}({med['before'][n] / 1000:.2f})" for n in only_b) or "-")
    print("only after:", " ".join(f"{n}({med['after'][n] / 1000:.2f})" for n in only_a) or "-")
    print("after, by self time (ms):")
    for n, us in sorted(med["after"].items(), key=lambda kv: -kv[1]):
        print(f"  {us / 1000:6.2f}  {n}")


if __name__ == "__main__":
    sys.exit(main())
