"""Before/after of one lever in fresh one-shot processes, interleaved round by round.

Runs a snippet (a small Python file) in a fresh ``python -I -S`` process against two source
trees (``--before`` and ``--after``: directories holding the ``istio_cni`` package, compiled
modules built in place), alternating which tree goes first in each round, and prints the
medians of the process's wall time (spawn to reap, parent's clock) and peak RSS
(``/usr/bin/time -f %M``, as bench_add.py's rss-direct does), plus what the snippet prints
on its last line (its own timings, e.g. ``tls_ms=1.23``).

The machine is shared: only the paired medians of one run mean anything. With ``--netns``
each process gets a fresh network namespace (made untimed, deleted after) as ``sys.argv[1]``.

    .venv/bin/python benchmarks/lever_paired.py --before /tmp/old/src --after src \\
        --snippet benchmarks/levers/commit_auto.py --netns --rounds 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import time
import uuid

PRELUDE = "import sys; sys.path[:0] = [{tree!r}, {site!r}]; sys.argv[1:] = {args!r}\n"


def interpreter() -> str:
    """The interpreter the bundle ships (the venv's base interpreter, run with -I -S)."""
    return os.path.realpath(sys.executable)


def run_once(tree: str, snippet: str, netns: bool) -> tuple:
    args = []
    name = ""
    if netns:
        name = f"lever-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        args = [f"/run/netns/{name}"]
    code = PRELUDE.format(tree=os.path.abspath(tree), site=sysconfig.get_paths()["purelib"], args=args) + snippet
    try:
        t0 = time.monotonic()
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%M", interpreter(), "-I", "-S", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        wall = (time.monotonic() - t0) * 1e3
    finally:
        if name:
            subprocess.run(["ip", "netns", "del", name], timeout=30)
    if p.returncode != 0:
        sys.exit(f"{tree}: snippet failed ({p.returncode}): {p.stderr[-2000:]}")
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    extra = {}
    lines = p.stdout.strip().splitlines()
    for item in lines[-1].split() if lines else []:
        key, sep, value = item.partition("=")
        if sep:
            extra[key] = float(value)
    return wall, rss_kb, extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--snippet", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--netns", action="store_true")
    a = ap.parse_args()
    snippet = open(a.snippet).read()
    runs: dict = {"before": [], "after": []}
    trees = {"before": a.before, "after": a.after}
    for i in range(a.rounds):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for which in order:
            runs[which].append(run_once(trees[which], snippet, a.netns))
    print(f"snippet {a.snippet}, {a.rounds} interleaved rounds, medians")
    for which in ("before", "after"):
        rows = runs[which]
        walls = [r[0] for r in rows]
        rss = [r[1] for r in rows]
        keys = sorted({k for r in rows for k in r[2]})
        extra = " ".join(f"{k}={statistics.median(r[2][k] for r in rows if k in r[2]):.2f}" for k in keys)
        print(
            f"{which:6} wall {statistics.median(walls):6.2f} ms  peak RSS {statistics.median(rss) / 1024:5.2f} MiB "
            f"(max {max(rss) / 1024:5.2f})  {extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
