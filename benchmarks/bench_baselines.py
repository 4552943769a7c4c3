"""The designs we must beat, on the same pod's rules, in fresh pod namespaces, same run.

* ``baseline-2019``: ``nsenter --net=<netns> bash istio-iptables.sh``, one ``iptables-legacy``
  exec per rule (benchmarks/baselines/script2019.py).
* ``baseline-upstream-pipeline``: ``*-save`` checks, ``*-restore --noflush`` per family, final
  save, all inside the netns (benchmarks/baselines/pipeline.py; iptables-nft as upstream picks
  in a fresh netns).
* ``concurrent-64-baseline-upstream-pipeline``: 64 pipelines at once on distinct namespaces.

Each is the rule application only (no pod lookup, no plugin process), i.e. a lower bound of its
design's ADD; upstream's whole Go plugin is benchmarked in bench_add.py.
"""

from __future__ import annotations

import harness
from baselines import pipeline, script2019
from bench_add import ROUNDS, run_concurrently


def _bench_script(benchmark, pool, argv_for, verify) -> None:
    def setup():
        if pool.made:
            verify(pool.made[-1])
        pool.recycle()
        return (pool.new(),), {}

    def run(ns):
        harness.run_process(argv_for(ns), {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).check("baseline")

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    verify(pool.made[-1])


def bench_baseline_2019_script(benchmark, pod_ruleset, netns_pool, tmp_path, record):
    script = script2019.write(pod_ruleset, tmp_path)

    def verify(ns):
        got = harness.assert_redirect_committed(ns, pod_ruleset, "2019 script")
        assert got == "iptables-legacy", got

    _bench_script(benchmark, netns_pool, lambda ns: script2019.argv(script, ns.path), verify)
    record(benchmark, "baseline-2019", iptables_execs=script2019.calls(pod_ruleset))


def bench_baseline_upstream_pipeline(benchmark, pod_ruleset, netns_pool, tmp_path, record):
    script = pipeline.write(pod_ruleset, tmp_path, "nft")

    def verify(ns):
        got = harness.assert_redirect_committed(ns, pod_ruleset, "upstream pipeline")
        assert got == "iptables-nft", got

    _bench_script(benchmark, netns_pool, lambda ns: pipeline.argv(script, ns.path), verify)
    record(benchmark, "baseline-upstream-pipeline", variant="iptables-nft")


def bench_baseline_upstream_pipeline_concurrent_64(benchmark, pod_ruleset, netns_pool, tmp_path, record):
    script = pipeline.write(pod_ruleset, tmp_path, "nft")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def start_one(_i, ns):
        return harness.run_process(pipeline.argv(script, ns.path), env, timeout=120)

    def verify(ns):
        harness.assert_redirect_committed(ns, pod_ruleset, "upstream pipeline")

    info = run_concurrently(benchmark, netns_pool, start_one, verify)
    record(benchmark, "concurrent-64-baseline-upstream-pipeline", variant="iptables-nft", **info)
