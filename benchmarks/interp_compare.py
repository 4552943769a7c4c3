"""Which interpreter the bundle carries: whole direct-path ADDs through bundles built from
different interpreters, interleaved round by round.

The bundle (installer/istio_cni_installer/bundle.py) copies the RUNNING interpreter. The node
image builds it from Debian 12's /usr/bin/python3.11 (static libpython, PGO/LTO); ``make bench``
builds it from the project venv, whose base is pyenv's 3.11 (shared libpython3.11.so). This
compares, against the same TLS fake API server (bearer token, JSON kubeconfig as the installer
writes it), each ADD on its own fresh pod netns (made untimed), through the installed front
exactly as kubelet execs it:

* ``venv``   - the bundle ``make bench`` measures (built here from this interpreter);
* ``debian`` - the same source tree and compiled modules (CPython 3.11 ABI) bundled by
  /usr/bin/python3.11: the venv's ``_cffi_backend`` and PyYAML are put on its path, nothing else;
* ``image``  - the bundle inside the node image tools/images/build.py built and cached (extracted
  from its docker-archive without running it); ``--no-image`` leaves it out. Its source tree is
  whatever the image was built from: the script prints how many plugin sources differ from src/.

Per round and per pod kind (redirected: rules checked after; skipped: no rules checked), every
bundle runs once, the order rotating each round. Prints medians of wall (fork to reap) and peak
RSS (``/usr/bin/time -f %M``). ``--phase-rounds N`` then runs bench_phases.py's probe launcher
(same bundle, ``-I -S``, timers around the phases) N interleaved rounds per bundle plus the bare
interpreter through an identical launcher, and prints the phase medians. Root; from the repo root:

    flock /tmp/istio-cni-node.lock .venv/bin/python benchmarks/interp_compare.py --rounds 60 --phase-rounds 40
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import statistics
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO / "tests"), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import harness  # noqa: E402

IMAGES = Path(os.environ.get("ISTIO_CNI_TOOLS_CACHE", Path.home() / ".cache" / "istio-cni-tools")) / "images"
IMAGE_BUNDLE = "opt/istio-cni/bundle/"


class Node:
    """One installed plugin: bin dir (launcher + bundle) and run dir (kubeconfig, no agent)."""

    def __init__(self, label: str, bundle: Path, base: Path, api) -> None:
        from peers.kubeapi import write_kubeconfig

        from istio_cni_installer.binaries import Binaries

        self.label = label
        self.bin_dir = base / label / "bin"
        self.run_dir = base / label / "run"
        self.bin_dir.mkdir(parents=True)
        self.run_dir.mkdir(parents=True)
        Binaries(str(bundle), mounted=str(self.bin_dir), host=str(self.bin_dir)).ensure()
        write_kubeconfig(self.run_dir / "istio-cni-kubeconfig", api.url, api.ca_file, api.token, "istio-cni")
        self.manifest = json.loads((bundle / "MANIFEST.json").read_text())
        self.exe = self.bin_dir / "istio-cni"

    def add(self, ns: harness.PodNetns, pod: str, cid: str) -> harness.ProcResult:
        from istio_cni._fastpath import json_dumps

        env = harness.cni_env(str(self.bin_dir), ns, pod, cid)
        stdin = json_dumps(harness.netconf(str(self.run_dir), ns.prev_result()))
        stdin = stdin if isinstance(stdin, bytes) else stdin.encode()
        return harness.run_process([self.exe], env, stdin, rss=True).check(f"{self.label} ADD {pod}")


def build_venv_bundle(out: Path) -> Path:
    from istio_cni_installer.bundle import build

    return Path(build(out).path)


def image_archive() -> Path | None:
    try:
        status = (IMAGES / "node.status").read_text().split()
    except OSError:
        return None
    return Path(status[2]) if len(status) == 3 and status[0] == "ok" else None


def extract_image_bundle(archive: Path, out: Path) -> Path:
    """/opt/istio-cni/bundle from a docker-archive, layer by layer (later layers win)."""
    with tarfile.open(archive) as outer:
        layers = json.load(outer.extractfile("manifest.json"))[0]["Layers"]
        for layer in layers:
            data = outer.extractfile(layer).read()
            with tarfile.open(fileobj=io.BytesIO(data)) as lt:
                members = []
                for m in lt.getmembers():
                    name = m.name.lstrip("./")
                    if not name.startswith(IMAGE_BUNDLE) or ".wh." in name:
                        continue
                    m.name = name[len(IMAGE_BUNDLE):]
                    if m.name and (m.isfile() or m.isdir() or m.issym()):
                        members.append(m)
                if members:
                    out.mkdir(parents=True, exist_ok=True)
                    lt.extractall(out, members=members, filter="tar")
    if not (out / "MANIFEST.json").is_file():
        raise FileNotFoundError(f"{archive}: no {IMAGE_BUNDLE}MANIFEST.json")
    return out


def source_diff(bundle: Path) -> list[str]:
    """Plugin .py files whose bytes differ between the bundle and src/istio_cni (or exist once)."""
    a, b = bundle / "site-packages" / "istio_cni", REPO / "src" / "istio_cni"
    names = {p.relative_to(a) for p in a.rglob("*.py")} | {
        p.relative_to(b) for p in b.rglob("*.py") if "tools" not in p.relative_to(b).parts and
        not p.name.endswith(".cffi.py")}
    return sorted(str(n) for n in names if not ((a / n).is_file() and (b / n).is_file() and
                                                (a / n).read_bytes() == (b / n).read_bytes()))


def bare_python(bundle: Path) -> tuple[list, dict]:
    m = json.loads((bundle / "MANIFEST.json").read_text())
    return [str(bundle / m["python"]), "-I", "-S", "-c", "pass"], {"LD_LIBRARY_PATH": str(bundle / m["lib"])}


def adds(nodes: list[Node], rounds: int, ruleset) -> dict:
    """{(label, pod): [(ms, rss_kib)]}: every node per round and pod kind, order rotating."""
    out: dict = {}
    for i in range(rounds):
        k = i % len(nodes)
        order = nodes[k:] + nodes[:k]
        for pod in (harness.REDIRECT_POD, harness.PLAIN_POD):
            for node in order:
                ns = harness.PodNetns("ipc", i)
                try:
                    r = node.add(ns, pod, f"ipc{uuid.uuid4().hex[:12]}")
                    if pod == harness.REDIRECT_POD:
                        harness.assert_redirect_committed(ns, ruleset, node.label)
                    else:
                        harness.assert_nothing_committed(ns, node.label)
                finally:
                    ns.delete()
                out.setdefault((node.label, pod), []).append((r.seconds * 1e3, r.maxrss_kb))
    return out


def bare_starts(bundles: dict, rounds: int) -> dict:
    """Median ms of ``python -I -S -c pass`` from each bundle (fork to reap), interleaved."""
    got: dict = {k: [] for k in bundles}
    labels = list(bundles)
    for i in range(rounds):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:
            argv, env = bare_python(bundles[label])
            r = harness.run_process(argv, env).check(f"{label} bare python")
            got[label].append(r.seconds * 1e3)
    return {k: statistics.median(v) for k, v in got.items()}


def phases(nodes: list[Node], rounds: int, tmp: Path, ruleset) -> dict:
    """bench_phases.py's probe per node: {label: (median phase rows ms, floor medians ms)}."""
    import bench_phases

    pool = harness.NetnsPool("ipp")
    probers, floors, rows = {}, {}, {}
    try:
        for node in nodes:
            p = bench_phases.Prober(node, tmp / f"probe-{node.label}")
            p.modules, compiled = p.list_modules(pool.new(), node.run_dir)
            probers[node.label] = p
            floors[node.label] = bench_phases.ProcessFloors(p, tmp / f"probe-{node.label}", node.label, compiled)
            rows[node.label] = []
        pool.recycle()
        for i in range(rounds):
            k = i % len(nodes)
            for node in nodes[k:] + nodes[:k]:
                floors[node.label].sample()
                ns = pool.new()
                t0, t1, ph = probers[node.label].add(ns, node.run_dir)
                harness.assert_redirect_committed(ns, ruleset, f"{node.label} probe")
                rows[node.label].append(bench_phases._rows_of(t0, t1, ph, None))
            pool.recycle()
    finally:
        pool.close()
    return {label: (bench_phases._median_rows(rows[label]), floors[label].medians(), rows[label]) for label in rows}


def bootstrap_ci(d: list, n: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``d`` (fixed seed: reproducible)."""
    rng = random.Random(18)
    meds = sorted(statistics.median(rng.choices(d, k=len(d))) for _ in range(n))
    return meds[int(n * 0.025)], meds[int(n * 0.975) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--phase-rounds", type=int, default=0)
    ap.add_argument("--no-image", action="store_true", help="leave the node image's bundle out")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("root needed: every ADD gets its own network namespace")

    from peers import fakeapi

    from istio_cni.redirect import redirect_from_pod
    from istio_cni.rules.builder import build

    with tempfile.TemporaryDirectory(prefix="interp-compare-") as tmp_s:
        tmp = Path(tmp_s)
        for d in ("probe-venv", "probe-debian", "probe-image"):
            (tmp / d).mkdir()
        bundles = {"venv": build_venv_bundle(tmp / "b-venv"),
                   "debian": harness.build_image_python_bundle(tmp / "b-debian", tmp / "shim")}
        archive = None if a.no_image else image_archive()
        if archive is not None:
            bundles["image"] = extract_image_bundle(archive, tmp / "b-image")
        for label, b in bundles.items():
            m = json.loads((b / "MANIFEST.json").read_text())
            diff = source_diff(b)
            print(f"{label:6} bundle {m['id']} python {m.get('python_version', '?')} "
                  f"{m['size_bytes'] / 2**20:.1f} MiB; plugin sources differing from src/: {len(diff)}"
                  + (f" ({' '.join(diff[:8])}{' ...' if len(diff) > 8 else ''})" if diff else ""))
        if archive is not None:
            print(f"image  from {archive.name}")
        ruleset = build(redirect_from_pod(harness.sidecar_pod(harness.REDIRECT_POD),
                                          (f"{harness.POD_SUBNET}.10/24",)))
        token = secrets.token_hex(16)
        fakeapi._Server.request_queue_size = 256
        with fakeapi.FakeAPI(tls_dir=tmp / "tls", token=token) as api:
            api.token = token
            for pod in harness.bench_pods():
                api.add_pod(pod)
            nodes = [Node(label, b, tmp / "nodes", api) for label, b in bundles.items()]
            # Warm-up: page cache, .pyc of every bundle, the fake's TLS session state.
            adds(nodes, 1, ruleset)
            res = adds(nodes, a.rounds, ruleset)
            bare = bare_starts(bundles, a.rounds)
            ph = phases(nodes, a.phase_rounds, tmp, ruleset) if a.phase_rounds else {}
    print(f"\ndirect-path ADD through the installed front, TLS fake API, {a.rounds} interleaved rounds, medians")
    print(f"{'bundle':8}{'bare -I -S -c pass':>20}{'redirected ADD':>16}{'RSS':>10}{'skipped ADD':>14}{'RSS':>10}")
    for node in nodes:
        r = res[(node.label, harness.REDIRECT_POD)]
        s = res[(node.label, harness.PLAIN_POD)]
        print(f"{node.label:8}{bare[node.label]:17.2f} ms"
              f"{statistics.median(x for x, _ in r):13.2f} ms{statistics.median(y for _, y in r) / 1024:6.2f} MiB"
              f"{statistics.median(x for x, _ in s):11.2f} ms{statistics.median(y for _, y in s) / 1024:6.2f} MiB")
    print("\npaired per round against venv (same round, same pod kind): median difference, "
          "95% bootstrap CI, rounds faster")
    for node in nodes[1:]:
        for pod, kind in ((harness.REDIRECT_POD, "redirected"), (harness.PLAIN_POD, "skipped")):
            d = [x - v for (x, _), (v, _) in zip(res[(node.label, pod)], res[("venv", pod)], strict=False)]
            lo, hi = bootstrap_ci(d)
            print(f"{node.label:8}{kind:11}{statistics.median(d):+7.2f} ms  [{lo:+.2f}, {hi:+.2f}]  "
                  f"{sum(x < 0 for x in d)}/{len(d)}")
    if ph:
        keys = [k for k in next(iter(ph.values()))[0] if k != "agent_work"]
        print(f"\nphases of the redirected ADD (bench_phases probe launcher), {a.phase_rounds} rounds, median ms")
        print(f"{'phase':14}" + "".join(f"{label:>10}" for label in ph))
        for k in keys:
            print(f"{k:14}" + "".join(f"{ph[label][0][k]:10.2f}" for label in ph))
        for k in ("interpreter", "exit", "imports"):
            print(f"{'floor ' + k:14}" + "".join(f"{ph[label][1][k]:10.2f}" for label in ph))
        print("paired per round against venv: median difference ms [95% bootstrap CI]")
        for label in list(ph)[1:]:
            for k in ("interpreter", "probe", "imports", "tls_context", "exit", "wall"):
                d = [(x[k] - v[k]) * 1e3 for x, v in zip(ph[label][2], ph["venv"][2], strict=False)]
                lo, hi = bootstrap_ci(d)
                print(f"  {label:8}{k:13}{statistics.median(d):+7.2f}  [{lo:+.2f}, {hi:+.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
