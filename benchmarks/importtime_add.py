"""``-X importtime`` of one ADD exactly as kubelet runs it (bundle + launcher), summed per module.

Usage (root: it makes a pod netns; run from the repo root with the venv)::

    .venv/bin/python benchmarks/importtime_add.py [--runs 7] [--kubeconfig json|yaml] [--bundle DIR]

Builds the plugin bundle from the venv (or reuses ``--bundle``), deploys the launcher with the
installer's code, serves a sidecar pod from the fake API on 127.0.0.1, and execs a redirected
ADD ``--runs`` times through a copy of the launcher whose interpreter line carries
``-X importtime``. Prints the median total import time and the median cumulative time of the
modules that decide the codec/YAML question (``_json``, ``json``, ``yaml``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests")]

WATCH = ("_json", "json", "json.decoder", "yaml", "yaml._yaml", "re", "istio_cni._fastpath",
         "istio_cni.kubeconfig", "istio_cni.transport", "_ssl")


def _parse(stderr: str) -> tuple[int, dict[str, int]]:
    total, cumulative = 0, {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        total += int(self_us)
        cumulative.setdefault(name.strip(), int(cum_us))
    return total, cumulative


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--kubeconfig", choices=("json", "yaml"), default="json")
    ap.add_argument("--bundle", help="an already built bundle dir (default: build one)")
    ap.add_argument("--modules", help="write the names of the modules the last run imported here")
    ap.add_argument("--top", type=int, default=0, help="also list the N largest cumulative imports")
    args = ap.parse_args()

    from peers.fakeapi import FakeAPI
    from support.pods import sidecar_pod

    from istio_cni.tools import netns as nsutil
    from istio_cni_installer.binaries import Binaries
    from istio_cni_installer.bundle import build
    from istio_cni_installer.front import read_config

    with tempfile.TemporaryDirectory(prefix="importtime-add-") as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or build(tmp / "bundle").path
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        b = Binaries(bundle, str(bin_dir), str(bin_dir))
        b.ensure()
        timed = tmp / "istio-cni-importtime"
        # The launcher is the compiled front (an ELF); run what it execs, with -X importtime.
        cfg = read_config(b.launcher.read_bytes())
        timed.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={shlex.quote(cfg['lib'])} exec {shlex.quote(cfg['python'])} "
                         f"-X importtime -I -S -c {shlex.quote(cfg['code'])} \"$@\"\n")
        timed.chmod(0o755)
        with FakeAPI() as api, nsutil.temporary("imptime") as pod_ns, nsutil.temporary("impnode") as node_ns:
            api.add_pod(sidecar_pod("web"))
            nsutil.veth_pair(pod_ns, node_ns, "192.0.2.2/24", "192.0.2.1/24")  # the pod's address
            kc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
                  "clusters": [{"name": "k", "cluster": {"server": api.url}}],
                  "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                  "users": [{"name": "u", "user": {"token": "t0ken"}}]}
            kc_path = tmp / "kubeconfig"
            if args.kubeconfig == "json":
                kc_path.write_text(json.dumps(kc))
            else:
                import yaml

                kc_path.write_text(yaml.safe_dump(kc))
            conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
                    "kubernetes": {"kubeconfig": str(kc_path)}, "netfilter_backend": "dry-run",
                    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                                   "ips": [{"address": "192.0.2.2/24"}]}}
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
                   "CNI_CONTAINERID": "cid", "CNI_NETNS": nsutil.path(pod_ns), "CNI_IFNAME": "eth0",
                   "CNI_PATH": str(bin_dir),
                   "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
            totals, cums = [], {}
            for _ in range(args.runs):
                r = subprocess.run([str(timed)], input=json.dumps(conf).encode(), env=env,
                                   capture_output=True, timeout=60)
                if r.returncode != 0:
                    print(r.stdout.decode(), r.stderr.decode()[-2000:], file=sys.stderr)
                    return 1
                total, cum = _parse(r.stderr.decode())
                totals.append(total)
                for name in WATCH:
                    cums.setdefault(name, []).append(cum.get(name, 0))
    print(f"ADD through the launcher, {args.kubeconfig} kubeconfig, {args.runs} runs (median):")
    print(f"  all imports: {statistics.median(totals) / 1000:.1f} ms")
    for name in WATCH:
        med = statistics.median(cums[name])
        if med:
            print(f"  {name}: {med / 1000:.2f} ms cumulative")
    if args.modules:
        Path(args.modules).write_text("\n".join(sorted(cum)) + "\n")
    if args.top:
        print("  largest cumulative (last run):")
        for name, us in sorted(cum.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"    {name}: {us / 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
