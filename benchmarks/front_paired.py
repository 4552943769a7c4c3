"""The compiled front's two levers, each paired and interleaved round by round (issue 18).

1. ``launcher``: the bundled interpreter running ``pass`` through the ``#!/bin/sh`` launcher the
   front replaced vs through the front (exec only): what the front saves on every exec.
2. ``agent``: an agent-path ADD (redirected pod, and a pod without a sidecar) through the
   installed front, which answers it without the interpreter, vs the same bundle behind a front
   without the agent path (the plugin's own agent client: every ADD before the front). A real
   agent process, the in-process mini API (no control plane, no lock needed), a fresh netns per
   ADD.

Run as root from the repo: ``.venv/bin/python benchmarks/front_paired.py --rounds 30``; prints one
JSON line (medians and the median of the paired differences, ms).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "agent")]

from support.injected_pods import injected_pod, uninjected_pod  # noqa: E402
from support.miniapi import MiniAPI  # noqa: E402
from support.nodeharness import Node, netconf, plugin_env  # noqa: E402

from istio_cni.tools import netns as nsutil  # noqa: E402
from istio_cni_installer.binaries import Binaries, front_config  # noqa: E402
from istio_cni_installer.bundle import build, read_manifest  # noqa: E402
from istio_cni_installer.front import KEYS, configure  # noqa: E402


def _ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1e3, 2)


def _timed(argv: list[str], env: dict, stdin: bytes = b"") -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)
    elapsed = time.perf_counter() - t
    if r.returncode != 0 or b"falling back" in r.stderr:
        raise AssertionError(f"{argv[0]}: rc {r.returncode}: {r.stdout[-500:]!r} {r.stderr[-500:]!r}")
    return elapsed


def launcher_pair(tmp: Path, bundle: Path, rounds: int) -> dict:
    m = read_manifest(bundle)
    py, lib = str(bundle / m["python"]), str(bundle / m["lib"])
    sh = tmp / "sh-launcher"
    sh.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={shlex.quote(lib)}\nexport LD_LIBRARY_PATH\n"
                  f'exec {shlex.quote(py)} -I -S -c pass "$@"\n')
    front = tmp / "front-launcher"
    front.write_bytes(configure((bundle / m["front"]).read_bytes(), {"python": py, "lib": lib, "code": "pass"}))
    for exe in (sh, front):
        exe.chmod(0o755)
    samples: dict[str, list[float]] = {"sh": [], "front": []}
    for i in range(rounds + 1):
        for name, exe in (("sh", sh), ("front", front)) if i % 2 else (("front", front), ("sh", sh)):
            t = _timed([str(exe)], {"CNI_COMMAND": "VERSION"})
            if i:  # round 0 warms the page cache
                samples[name].append(t)
    return {"sh_launcher_ms": _ms(samples["sh"]), "front_ms": _ms(samples["front"]),
            "paired_saving_ms": _ms([a - b for a, b in zip(samples["sh"], samples["front"], strict=True)])}


def _netns() -> str:
    name = nsutil.unique_name("fp")
    nsutil.add(name)
    nsutil.ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    nsutil.ip("-n", name, "addr", "add", "192.0.2.7/24", "dev", "eth0")
    nsutil.ip("-n", name, "link", "set", "eth0", "up")
    return name


def agent_pair(tmp: Path, bin_dir: Path, bundle_id: str, rounds: int) -> dict:
    front = bin_dir / "istio-cni"
    config = front_config(f"{bin_dir}/istio-cni.d/{bundle_id}", read_manifest(bin_dir / "istio-cni.d" / bundle_id))
    plugin = tmp / "plugin-only"  # the same front without the agent path: the plugin does the ADD
    plugin.write_bytes(configure(front.read_bytes(), {k: config[k] for k in KEYS}))
    plugin.chmod(0o755)
    variants = [("front", front, "red-1"), ("plugin", plugin, "red-1"),
                ("front-skip", front, "skip-1"), ("plugin-skip", plugin, "skip-1")]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with MiniAPI() as api:
        node = Node(api, tmp)
        api.put_pod(injected_pod("red-1"))
        api.put_pod(uninjected_pod("skip-1"))
        node.start_agent()
        stdin = json.dumps(netconf(node.run_dir)).encode()
        try:
            for i in range(rounds + 1):
                for name, exe, pod in variants[i % 4:] + variants[:i % 4]:
                    ns = _netns()
                    try:
                        t = _timed([str(exe)], plugin_env(ns, pod), stdin)
                    finally:
                        nsutil.delete(ns)
                    if i:
                        samples[name].append(t)
        finally:
            node.stop_agent()
    out = {f"{name}_ms": _ms(xs) for name, xs in samples.items()}
    for kind in ("", "-skip"):
        diffs = [a - b for a, b in zip(samples["plugin" + kind], samples["front" + kind], strict=True)]
        out[f"paired_saving{kind.replace('-', '_')}_ms"] = _ms(diffs)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="front-paired.") as d:
        tmp = Path(d)
        info = build(tmp / "bundle")
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        Binaries(info.path, str(bin_dir), str(bin_dir)).ensure()
        result = {"rounds": args.rounds,
                  "launcher": launcher_pair(tmp, Path(info.path), args.rounds),
                  "agent_path_add": agent_pair(tmp, bin_dir, info.bundle_id, args.rounds)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
