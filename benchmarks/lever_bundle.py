"""Before/after of one lever on whole direct-path ADDs, through bundles as the node image ships them.

Builds one bundle per source tree (``--before``/``--after``: directories holding ``src/`` and
``installer/`` with the compiled modules built in place) with the node image's interpreter
(``harness.IMAGE_PYTHON``), installs each with this tree's installer (its compiled front and
launch code), and runs redirected (or, with ``--skip``, skipped) ADDs through the installed
front against one TLS fake API server (bearer token, JSON kubeconfig as the installer writes
it), each into its own fresh pod netns (made untimed), the order alternating every round; the
rules are checked after every ADD. Prints per tree the medians of the whole process (spawn to
reap) and of its peak RSS, then the paired difference (after - before) with a 95% bootstrap CI.
Root; from the repo root:

    git worktree add /tmp/before <commit> && cp src/istio_cni/*.so src/istio_cni/_front /tmp/before/src/istio_cni/
    flock /tmp/istio-cni-node.lock .venv/bin/python benchmarks/lever_bundle.py \
        --before /tmp/before --after . --rounds 80 [--api real]

(The before tree needs the compiled modules: copied from this tree when the lever is pure Python.)
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO / "tests"), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import harness  # noqa: E402
from interp_compare import Node, bootstrap_ci  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--skip", action="store_true", help="ADD a pod without a sidecar (no rules)")
    ap.add_argument("--api", choices=("fake", "real"), default="fake",
                    help="the TLS fake API (default) or etcd + kube-apiserver (tests/peers ControlPlane, "
                         "a pod-get-only token), as make bench measures")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("root needed: every ADD gets its own network namespace")
    why = harness.image_python_usable()
    if why:
        sys.exit(f"cannot build the bundles as the node image does: {why}")


    from istio_cni.redirect import redirect_from_pod
    from istio_cni.rules.builder import build

    pod = harness.PLAIN_POD if a.skip else harness.REDIRECT_POD
    ruleset = build(redirect_from_pod(harness.sidecar_pod(harness.REDIRECT_POD), (f"{harness.POD_SUBNET}.10/24",)))
    with tempfile.TemporaryDirectory(prefix="lever-bundle-") as tmp_s:
        tmp = Path(tmp_s)
        bundles = {label: harness.build_image_python_bundle(tmp / f"b-{label}", tmp / "shim", root.resolve())
                   for label, root in (("before", a.before), ("after", a.after))}
        with _api_server(a.api, tmp) as api:
            nodes = [Node(label, b, tmp / "nodes", api) for label, b in bundles.items()]
            got: dict[str, list[tuple[float, int]]] = {n.label: [] for n in nodes}
            for i in range(a.rounds + 2):  # two warm-up rounds: page cache, .pyc, the fake's TLS state
                for node in nodes if i % 2 == 0 else nodes[::-1]:
                    ns = harness.PodNetns("lvb", i)
                    try:
                        r = node.add(ns, pod, f"lvb{uuid.uuid4().hex[:12]}")
                        if a.skip:
                            harness.assert_nothing_committed(ns, node.label)
                        else:
                            harness.assert_redirect_committed(ns, ruleset, node.label)
                    finally:
                        ns.delete()
                    if i >= 2:
                        got[node.label].append((r.seconds * 1e3, r.maxrss_kb))
    print(f"{'skipped' if a.skip else 'redirected'} ADD through the installed front, "
          f"{'TLS fake API' if a.api == 'fake' else 'etcd + kube-apiserver'}, "
          f"{a.rounds} alternating rounds, bundles built by {harness.IMAGE_PYTHON}")
    for label, v in got.items():
        print(f"{label:7} median {statistics.median(x for x, _ in v):7.2f} ms   "
              f"peak RSS {statistics.median(y for _, y in v) / 1024:5.2f} MiB")
    d = [x - y for (x, _), (y, _) in zip(got["after"], got["before"], strict=True)]
    lo, hi = bootstrap_ci(d)
    print(f"paired after - before: {statistics.median(d):+.2f} ms [{lo:+.2f}, {hi:+.2f}], "
          f"after faster in {sum(x < 0 for x in d)}/{len(d)} rounds")
    return 0


@contextmanager
def _api_server(kind: str, tmp: Path):
    """The API server the ADDs ask, serving the benchmark's pods: ``url``, ``ca_file``, ``token``."""
    from types import SimpleNamespace

    if kind == "fake":
        from peers import fakeapi

        token = secrets.token_hex(16)
        with fakeapi.FakeAPI(tls_dir=tmp / "tls", token=token) as api:
            api.token = token
            for p in harness.bench_pods():
                api.add_pod(p)
            yield api
        return
    from peers.fixtures import running_control_plane

    with running_control_plane(tmp / "control-plane") as cp:
        cp.create_namespace(harness.POD_NAMESPACE)
        cp.create_namespace("istio-system")
        for p in harness.bench_pods():
            cp.create_pod(p)
        token, _ = cp.api.limited_identity(  # the plugin's own identity, as in make bench
            "istio-system", "istio-cni-lever", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            tmp / "identity-kubeconfig")
        yield SimpleNamespace(url=cp.server, ca_file=cp.ca_file, token=token)


if __name__ == "__main__":
    sys.exit(main())
