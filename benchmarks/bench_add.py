"""Whole-process ADD as kubelet sees it: exec to exit, fresh pod netns per round, same API server.

Compared in one run (ratios are checked by benchmarks/check_budgets.py):

* ``add-direct``: our plugin (bundle launcher) ADDs an injected pod: pod GET over TLS, decide,
  rules, commit in the netns.
* ``add-skip``: the same for a pod without a sidecar (pod GET, decide, no netfilter).
* ``add-upstream-go``: upstream's Go istio-cni, same netconf, pod, API server and netns shape.
* ``concurrent-64`` (and ``concurrent-64-upstream-go``): 64 ADDs at once on distinct
  namespaces (all must succeed); per-ADD p50/p99 in ``extra_info``. Our plugin on the direct
  path (no agent in its run dir).
* ``concurrent-64-agent``: the same burst on the chart's default deployment: through the
  compiled front with a live node agent (the paired benchmark's agent, which knows all 64 pods
  from its initial list before the first burst). Every netns is verified as in the direct
  burst, plus the agent's own "redirect rules committed" line for it, no fallback on the
  plugin's stderr and no pod GET by the agent during the bursts (cache hits only). CPU per
  ADD includes the agent process's own CPU (``/proc/<pid>/stat`` around each burst).
* ``paired-add``: the budget figures. Every variant above (plus both baselines, upstream's
  ADD of the pod without a sidecar, ``add-skip-upstream-go``, and our ADD through a live node
  agent, ``add-agent``) once per round in rotating order, so all see the same machine load;
  per-variant medians in ``extra_info``.
* ``rss-direct`` / ``rss-upstream-go``: peak RSS of one plugin exec (redirected and skipped
  pods; max over rounds) under ``/usr/bin/time -f %M``, apart from the timed benchmarks so the
  wrapper never inflates a compared time. ``rss-agent``: the same through the front with the
  live agent (the chart's default), every round checked as the agent burst is; the agent's
  own RSS (VmRSS, VmHWM) after the rounds is information.

Namespaces are made in ``setup=`` (untimed) and each round's result is verified there too: a
benchmark that timed a failing or no-op ADD would be worse than none.
"""

from __future__ import annotations

import itertools
import os
import resource
import statistics
from concurrent.futures import ThreadPoolExecutor

import harness
import pytest
from harness import CONCURRENT, PLAIN_POD, REDIRECT_POD

ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_ROUNDS", "30"))
CONCURRENT_ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_CONCURRENT_ROUNDS", "3"))
_ids = itertools.count()


def _container_id() -> str:
    return f"{os.getpid():x}{next(_ids):08x}".rjust(64, "0")


def _bench_single_add(benchmark, plugin, pool, pod, verify, rss: bool = False) -> list:
    """pedantic rounds of one ADD each; ``pod`` may be a callable of the round number.
    ``verify(ns, pod_name)`` checks each round's netns (untimed, in the next setup).
    Returns the per-round ProcResults (warm-up rounds included)."""
    results, names = [], []

    def setup():
        if pool.made:
            verify(pool.made[-1], names[-1])
        pool.recycle()
        return (pool.new(),), {}

    def checked_add(ns):
        names.append(pod(len(names)) if callable(pod) else pod)
        results.append(plugin.add(ns, names[-1], _container_id(), rss=rss))
        results[-1].check(f"{plugin.label} ADD of {names[-1]}")

    benchmark.pedantic(checked_add, setup=setup, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    verify(pool.made[-1], names[-1])
    return results


def bench_add_redirected(benchmark, our_plugin, netns_pool, pod_ruleset, record):
    backends = set()

    def verify(ns, _pod):
        backends.add(harness.assert_redirect_committed(ns, pod_ruleset, our_plugin.label))

    _bench_single_add(benchmark, our_plugin, netns_pool, REDIRECT_POD, verify)
    record(benchmark, "add-direct", launcher=our_plugin.launcher, backend=sorted(backends))


def bench_add_skipped_pod(benchmark, our_plugin, netns_pool, record):
    def verify(ns, _pod):
        harness.assert_nothing_committed(ns, our_plugin.label)

    _bench_single_add(benchmark, our_plugin, netns_pool, PLAIN_POD, verify)
    record(benchmark, "add-skip", launcher=our_plugin.launcher)


def bench_add_upstream_go(benchmark, upstream_plugin, netns_pool, pod_ruleset, record):
    backends = set()

    def verify(ns, _pod):
        backends.add(harness.assert_redirect_committed(ns, pod_ruleset, upstream_plugin.label))

    _bench_single_add(benchmark, upstream_plugin, netns_pool, REDIRECT_POD, verify)
    record(benchmark, "add-upstream-go", launcher=upstream_plugin.launcher, backend=sorted(backends))


def run_concurrently(benchmark, pool, start_one, verify, daemon_cpu=None) -> dict:
    """``CONCURRENT`` execs at once per round, each on its own fresh netns; returns info.

    ``daemon_cpu()``: CPU seconds so far of a process that serves the execs (the node agent),
    read around each burst and counted in the CPU per ADD, so its work is not hidden."""
    latencies, failures, cpu, served_cpu = [], [], [], []
    executor = ThreadPoolExecutor(max_workers=CONCURRENT)

    def setup():
        for ns in pool.made:
            verify(ns)
        pool.recycle()
        return ([pool.new() for _ in range(CONCURRENT)],), {}

    def children_cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children (the execs) only
        return u.ru_utime + u.ru_stime

    def burst(namespaces):
        before, served_before = children_cpu(), daemon_cpu() if daemon_cpu else 0.0
        for r in executor.map(start_one, range(CONCURRENT), namespaces):
            latencies.append(r.seconds)
            if r.rc != 0:
                failures.append(r)
        cpu.append(children_cpu() - before)
        if daemon_cpu:
            served_cpu.append(daemon_cpu() - served_before)

    try:
        benchmark.pedantic(burst, setup=setup, rounds=CONCURRENT_ROUNDS, iterations=1)
    finally:
        executor.shutdown(wait=True)
    if failures:
        failures[0].check(f"{len(failures)} of {len(latencies)} concurrent execs failed; first")
    for ns in pool.made:
        verify(ns)
    info = {"execs": len(latencies), "failures": len(failures),
            "p50_ms": harness.percentile(latencies, 50) * 1e3,
            "p99_ms": harness.percentile(latencies, 99) * 1e3,
            "max_ms": max(latencies) * 1e3,
            # user + system CPU per ADD of the execs (and anything they ran) and of the process
            # serving them (the agent, when there is one): what limits how fast a CPU-bound
            # node fills
            "cpu_s_per_add": round((sum(cpu) + sum(served_cpu)) / len(latencies), 5)}
    if daemon_cpu:
        info["exec_cpu_s_per_add"] = round(sum(cpu) / len(latencies), 5)
        info["agent_cpu_s_per_add"] = round(sum(served_cpu) / len(latencies), 5)
    return info


def _concurrent_redirected_adds(benchmark, plugin, netns_pool, pod_ruleset) -> dict:
    """``plugin`` ADDs the concurrent redirected pods all at once; every netns verified."""
    def start_one(i, ns):
        return plugin.add(ns, f"{REDIRECT_POD}-{i}", _container_id(), timeout=120)

    def verify(ns):
        harness.assert_redirect_committed(ns, pod_ruleset, plugin.label)

    return run_concurrently(benchmark, netns_pool, start_one, verify)


def bench_add_concurrent_64(benchmark, our_plugin, netns_pool, pod_ruleset, record):
    info = _concurrent_redirected_adds(benchmark, our_plugin, netns_pool, pod_ruleset)
    record(benchmark, "concurrent-64", launcher=our_plugin.launcher, **info)


def bench_add_concurrent_64_upstream_go(benchmark, upstream_plugin, netns_pool, pod_ruleset, record):
    info = _concurrent_redirected_adds(benchmark, upstream_plugin, netns_pool, pod_ruleset)
    record(benchmark, "concurrent-64-upstream-go", launcher=upstream_plugin.launcher, **info)


class AgentChecks:
    """What proves an ADD was served by ``plugin``'s live node agent, not the direct path:
    no fallback on the plugin's stderr, the agent's own commit line for the netns, and no pod
    GET by the agent (its watch cache answered)."""

    def __init__(self, plugin, api) -> None:
        self.plugin, self.api, self.agent = plugin, api, plugin.agent
        self.label, self.launcher = plugin.label, plugin.launcher
        self.fell_back: list = []
        self.committed: set[str] = set()
        self.gets_before = self.pod_gets()

    def pod_gets(self) -> int:
        return sum(1 for m, p in self.api.requests if m == "GET" and "/pods/" in p)

    def add(self, ns, pod: str, container_id: str, **kw):
        """``Plugin.add``, recording a fallback."""
        r = self.plugin.add(ns, pod, container_id, **kw)
        if b"falling back" in r.stderr:
            self.fell_back.append(r)
        return r

    def assert_committed_by_agent(self, ns) -> None:
        if ns.path not in self.committed:
            self.committed = self.agent.committed_netns()  # re-read: lines of the last round
        if ns.path not in self.committed:
            raise AssertionError(f"no agent commit line for {ns.path} in {self.agent.log.name}: "
                                 "the ADD did not go through the agent")

    def assert_served(self) -> None:
        assert not self.fell_back, (f"{len(self.fell_back)} ADDs fell back to the direct path: "
                                    f"{self.fell_back[0].stderr[-800:]!r}")
        gets = self.pod_gets() - self.gets_before
        assert gets == 0, f"the agent made {gets} pod GETs: its cache did not know the pods"


def concurrent_adds_via_agent(benchmark, agent_node, netns_pool, pod_ruleset) -> dict:
    """The burst through ``agent_node`` (plugin, api); every netns verified as in the direct
    burst and committed by the agent itself; CPU per ADD includes the agent's."""
    plugin, api = agent_node
    checks = AgentChecks(plugin, api)

    def start_one(i, ns):
        return checks.add(ns, f"{REDIRECT_POD}-{i}", _container_id(), timeout=120)

    def verify(ns):
        harness.assert_redirect_committed(ns, pod_ruleset, plugin.label)
        checks.assert_committed_by_agent(ns)

    info = run_concurrently(benchmark, netns_pool, start_one, verify, daemon_cpu=plugin.agent.cpu_seconds)
    checks.assert_served()
    return dict(info, fell_back=len(checks.fell_back), launcher=plugin.launcher)


def bench_add_concurrent_64_agent(benchmark, paired_agent_plugin, netns_pool, pod_ruleset, record):
    """The chart's default deployment: the burst through the front and a live agent (at the
    plugins' own CPU priority: one shared cgroup, as on this machine)."""
    record(benchmark, "concurrent-64-agent", agent_nice=0,
           **concurrent_adds_via_agent(benchmark, paired_agent_plugin, netns_pool, pod_ruleset))


def _alternate(i: int) -> str:
    return REDIRECT_POD if i % 2 == 0 else PLAIN_POD


def _verify_pod(ruleset, who):
    def verify(ns, pod):
        if pod == REDIRECT_POD:
            harness.assert_redirect_committed(ns, ruleset, who)
        else:
            harness.assert_nothing_committed(ns, who)
    return verify


def _rss_info(results) -> dict:
    """Peak RSS over all rounds, and per pod kind (rounds alternate: even = redirected)."""
    rss = sorted(r.maxrss_kb for r in results)
    return {"peak_rss_kb": rss[-1], "median_rss_kb": rss[len(rss) // 2],
            "peak_rss_kb_redirected": max(r.maxrss_kb for r in results[0::2]),
            "peak_rss_kb_skipped": max(r.maxrss_kb for r in results[1::2])}


def bench_peak_rss_ours(benchmark, our_plugin, netns_pool, pod_ruleset, record):
    results = _bench_single_add(benchmark, our_plugin, netns_pool, _alternate,
                                _verify_pod(pod_ruleset, our_plugin.label), rss=True)
    record(benchmark, "rss-direct", launcher=our_plugin.launcher, **_rss_info(results))


def bench_peak_rss_agent(benchmark, paired_agent_plugin, netns_pool, pod_ruleset, record):
    """Peak RSS of one exec on the chart's default deployment: through the front, live agent."""
    plugin, api = paired_agent_plugin
    checks = AgentChecks(plugin, api)
    plain = _verify_pod(pod_ruleset, plugin.label)

    def verify(ns, pod):
        plain(ns, pod)
        if pod == REDIRECT_POD:
            checks.assert_committed_by_agent(ns)

    results = _bench_single_add(benchmark, checks, netns_pool, _alternate, verify, rss=True)
    checks.assert_served()
    agent_rss, agent_hwm = plugin.agent.rss_kb()
    record(benchmark, "rss-agent", launcher=plugin.launcher, agent_rss_kb=agent_rss, agent_peak_rss_kb=agent_hwm,
           **_rss_info(results))


def bench_peak_rss_upstream_go(benchmark, upstream_plugin, netns_pool, pod_ruleset, record):
    results = _bench_single_add(benchmark, upstream_plugin, netns_pool, _alternate,
                                _verify_pod(pod_ruleset, upstream_plugin.label), rss=True)
    record(benchmark, "rss-upstream-go", launcher=upstream_plugin.launcher, **_rss_info(results))


PAIRED_ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_PAIRED_ROUNDS", "25"))


def _paired_variants(request, our_plugin, pod_ruleset, script_dir):
    """role -> (run(ns) -> ProcResult, verify(ns)) for every variant the budgets compare."""
    from baselines import pipeline, script2019

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    pipe, old = pipeline.write(pod_ruleset, script_dir, "nft"), script2019.write(pod_ruleset, script_dir)
    redirected = lambda who: lambda ns: harness.assert_redirect_committed(ns, pod_ruleset, who)  # noqa: E731
    variants = {
        "add-direct": (lambda ns: our_plugin.add(ns, REDIRECT_POD, _container_id()), redirected("ours")),
        "add-skip": (lambda ns: our_plugin.add(ns, PLAIN_POD, _container_id()),
                     lambda ns: harness.assert_nothing_committed(ns, "ours, skipped pod")),
        "baseline-upstream-pipeline": (lambda ns: harness.run_process(pipeline.argv(pipe, ns.path), env),
                                       redirected("upstream pipeline")),
        "baseline-2019": (lambda ns: harness.run_process(script2019.argv(old, ns.path), env),
                          redirected("2019 script")),
    }
    note = ""
    try:
        upstream = request.getfixturevalue("upstream_plugin")
    except pytest.skip.Exception as e:  # the checker falls back to baseline 2 and says so
        note = str(e)
    else:
        variants["add-upstream-go"] = (lambda ns: upstream.add(ns, REDIRECT_POD, _container_id()),
                                       redirected("upstream Go"))
        variants["add-skip-upstream-go"] = (lambda ns: upstream.add(ns, PLAIN_POD, _container_id()),
                                            lambda ns: harness.assert_nothing_committed(ns, "upstream Go, skipped pod"))
    agent, _api = request.getfixturevalue("paired_agent_plugin")

    def via_agent(ns, pod=REDIRECT_POD):
        r = agent.add(ns, pod, _container_id())
        if b"falling back" in r.stderr:  # a direct-path ADD must not count as an agent ADD
            raise AssertionError(f"paired agent ADD fell back: {r.stderr[-800:]!r}")
        return r

    variants["add-agent"] = (via_agent, redirected("ours via the node agent"))
    # The chart's default: the agent runs, and the compiled front answers a skipped pod through it.
    variants["add-skip-agent"] = (
        lambda ns: via_agent(ns, PLAIN_POD),
        lambda ns: harness.assert_nothing_committed(ns, "ours via the node agent, skipped pod"),
    )
    return variants, note


def bench_add_paired(benchmark, request, our_plugin, netns_pool, pod_ruleset, record, tmp_path):
    """The budget figures: every compared variant once per round, in a rotating order, each on
    its own fresh netns, so all of them see the same machine load (this machine is shared and
    its load moves by 10x within minutes; benchmarks run one after another would not). Each
    variant starts once the machine is quiet (``harness.settle``, untimed), not while the kernel
    still tears down the previous round's namespaces."""
    variants, note = _paired_variants(request, our_plugin, pod_ruleset, tmp_path)
    roles = list(variants)
    samples = {role: [] for role in roles}
    last = {}

    def verify_last():
        for role, ns in last.items():
            variants[role][1](ns)

    def setup():
        verify_last()
        netns_pool.recycle()
        last.clear()
        last.update({role: netns_pool.new() for role in roles})
        return (dict(last),), {}

    settled = []

    def one_round(namespaces):
        start = sum(len(s) for s in samples.values()) // len(roles)
        for role in roles[start % len(roles):] + roles[:start % len(roles)]:
            # Untimed (samples are the processes' own spawn-to-reap times): every variant starts
            # on a quiet machine, not on the kernel's teardown of the last round's namespaces or
            # the previous variant's deferred work (harness.settle).
            settled.append(harness.settle())
            result = variants[role][0](namespaces[role]).check(f"paired round, {role}")
            samples[role].append(result.seconds)

    benchmark.pedantic(one_round, setup=setup, rounds=PAIRED_ROUNDS, warmup_rounds=1, iterations=1)
    verify_last()
    medians = {role: statistics.median(s[1:]) * 1e3 for role, s in samples.items()}  # [0]: warm-up
    quartiles = {role: [round(q * 1e3, 2) for q in statistics.quantiles(s[1:], n=4)] for role, s in samples.items()}
    record(benchmark, "paired-add", paired_medians_ms={k: round(v, 2) for k, v in medians.items()},
           paired_quartiles_ms=quartiles,
           paired_rounds=PAIRED_ROUNDS, launcher=our_plugin.launcher,
           settle_ms_median=round(statistics.median(settled) * 1e3, 1),
           settle_ms_max=round(max(settled) * 1e3, 1),
           **({"upstream_go_missing": note} if note else {}))
