"""benchmarks/check_budgets.py: budget logic on synthetic pytest-benchmark JSON (no benchmarks run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "check_budgets.py"
_spec = importlib.util.spec_from_file_location("check_budgets", SCRIPT)
check_budgets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_budgets)


def bench(name: str, median_ms: float, role: str | None = None, **info) -> dict:
    extra = dict(info)
    if role:
        extra["role"] = role
    s = median_ms / 1e3
    return {"name": name, "extra_info": extra,
            "stats": {"median": s, "min": s * 0.9, "max": s * 1.2, "rounds": 30}}


def healthy() -> list[dict]:
    return [
        bench("bench_add_redirected", 10.0, "add-direct"),
        bench("bench_add_skipped_pod", 8.0, "add-skip"),
        bench("bench_add_upstream_go", 40.0, "add-upstream-go"),
        bench("bench_add_skipped_pod_upstream_go", 40.0, "add-skip-upstream-go"),
        bench("bench_agent_add", 5.0, "add-agent"),
        bench("bench_agent_add_skipped_pod", 4.0, "add-skip-agent"),
        bench("bench_baseline_upstream_pipeline", 15.0, "baseline-upstream-pipeline"),
        bench("bench_peak_rss_ours", 20.0, "rss-direct", peak_rss_kb=12 * 1024),
        bench("bench_peak_rss_agent", 5.0, "rss-agent", peak_rss_kb=2 * 1024, agent_rss_kb=40 * 1024),
        bench("bench_add_concurrent_64", 900.0, "concurrent-64", execs=192, failures=0, p99_ms=700.0,
              cpu_s_per_add=0.0123),
        bench("bench_add_concurrent_64_agent", 800.0, "concurrent-64-agent", execs=192, failures=0,
              p99_ms=600.0, cpu_s_per_add=0.0065, exec_cpu_s_per_add=0.0025, agent_cpu_s_per_add=0.004),
        bench("bench_add_concurrent_64_upstream_go", 4000.0, "concurrent-64-upstream-go", execs=192,
              failures=0, p99_ms=3900.0),
        sandbox({"primary": 100.0, "direct": 110.0, "agent": 102.0, "upstream-go": 200.0}),
    ]


def sandbox(medians: dict, rounds: int = 20) -> dict:
    """bench_sandbox.py's paired RunPodSandbox figures (added = median - primary median)."""
    return bench("bench_run_pod_sandbox_paired", sum(medians.values()), "sandbox-paired",
                 sandbox_medians_ms=medians, sandbox_p99_ms={k: v * 1.5 for k, v in medians.items()},
                 sandbox_added_ms={k: round(v - medians["primary"], 2) for k, v in medians.items() if k != "primary"},
                 sandbox_rounds=rounds, runtime="containerd CRI")


def run(tmp_path, benchmarks, capsys, *extra) -> tuple[int, str]:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine_info": {"node": "n"}, "benchmarks": benchmarks}))
    rc = check_budgets.main([str(path), *extra])
    return rc, capsys.readouterr().out


def status(out: str, budget: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(budget))
    return line.split()[-1]


def without(role: str) -> list[dict]:
    """The healthy run with the benchmark of ``role`` left out."""
    return [b for b in healthy() if b["extra_info"]["role"] != role]


def replace(benchmarks, role, **changes):
    for b in benchmarks:
        if b["extra_info"].get("role") == role:
            if "median_ms" in changes:
                m = changes.pop("median_ms") / 1e3
                b["stats"].update(median=m, min=m, max=m)
            b["extra_info"].update(changes)
    return benchmarks


def test_all_budgets_met(tmp_path, capsys):
    rc, out = run(tmp_path, healthy(), capsys)
    assert rc == 0, out
    for budget in ("direct-path ADD median", "agent-path ADD median", "skipped-pod ADD median",
                   "plugin peak RSS", "64 concurrent ADDs", "64-ADD burst wall time"):
        assert status(out, budget) == "PASS", out
    assert "ratio 0.25" in out  # direct 10 ms / Go 40 ms
    assert "ratio 0.10" in out  # skipped through the agent 4 ms / Go's ADD of the same pod 40 ms
    assert "ratio 0.20 (separate benchmarks)" in out  # agent burst 800 ms / Go's 4000 ms
    assert "6.5 ms CPU per ADD (execs 2.5 + agent 4.0)" in out  # the agent's CPU is counted
    assert "12.3 ms CPU per ADD" in out  # the direct burst's, beside it
    assert "all budgets met" in out


def test_direct_slower_than_go_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "add-direct", median_ms=14.0), capsys)
    assert rc == 1
    assert status(out, "direct-path ADD median") == "FAIL"
    assert "ratio 0.35" in out


def test_equal_to_limit_passes(tmp_path, capsys):
    benchmarks = replace(healthy(), "add-direct", median_ms=12.0)
    benchmarks = replace(benchmarks, "add-skip-agent", median_ms=10.0)
    benchmarks = replace(benchmarks, "concurrent-64-agent", median_ms=1000.0)
    benchmarks = replace(benchmarks, "rss-agent", peak_rss_kb=15 * 1024)
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 0, out


def test_reference_falls_back_to_baseline_2_and_says_so(tmp_path, capsys):
    benchmarks = without("add-upstream-go")
    rc, out = run(tmp_path, benchmarks, capsys)
    # direct 10 ms > 0.3 x baseline 2 at 15 ms: the fallback reference is really applied
    assert rc == 1
    assert status(out, "direct-path ADD median") == "FAIL"
    assert "reference is baseline-upstream-pipeline (add-upstream-go was not measured)" in out


def test_missing_agent_benchmark_is_not_a_pass(tmp_path, capsys):
    benchmarks = without("add-agent")
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 1
    assert status(out, "agent-path ADD median") == "MISSING"
    assert "not measured: add-agent" in out


def test_agent_benchmark_without_role_found_by_name(tmp_path, capsys):
    benchmarks = healthy()
    agent = next(b for b in benchmarks if b["extra_info"]["role"] == "add-agent")
    agent["extra_info"].pop("role")
    agent["name"] = "bench_agent_path_add"
    benchmarks.append(bench("bench_direct_path_add_for_agent", 25.0))
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 0, out
    assert "agent-path ADD taken by name: bench_agent_path_add" in out


def test_slow_agent_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "add-agent", median_ms=6.5), capsys)
    assert rc == 1
    assert status(out, "agent-path ADD median") == "FAIL"


def test_skip_not_cheap_enough_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "add-skip-agent", median_ms=11.0), capsys)
    assert rc == 1
    assert status(out, "skipped-pod ADD median") == "FAIL"


def test_budgets_naming_no_path_use_the_default_deployment_with_direct_beside(tmp_path, capsys):
    # Direct-path figures over the limits (skipped 20 / 40 = 0.5x, 17 MiB, burst 1500 / 4000 =
    # 0.375x) are printed as information; the agent-path figures decide.
    benchmarks = replace(healthy(), "add-skip", median_ms=20.0)
    benchmarks = replace(benchmarks, "rss-direct", peak_rss_kb=17 * 1024)
    benchmarks = replace(benchmarks, "concurrent-64", median_ms=1500.0)
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 0, out
    skipped = next(line for line in out.splitlines() if line.startswith("skipped-pod ADD median"))
    assert "agent (chart default)" in skipped
    assert "direct path (information, add-skip): 20.0 ms, ratio 0.50 (separate benchmarks)" in skipped
    rss = next(line for line in out.splitlines() if line.startswith("plugin peak RSS"))
    assert "2.0 MiB" in rss and "max over rounds of rss-agent" in rss
    assert "direct path (information, rss-direct): 17.0 MiB" in rss
    assert "the agent process itself (information): 40.0 MiB RSS" in rss
    burst = next(line for line in out.splitlines() if line.startswith("64-ADD burst wall time"))
    assert "800.0 ms" in burst and "direct path (information, concurrent-64): 1500.0 ms, ratio 0.38" in burst
    direct = next(line for line in out.splitlines() if line.startswith("direct-path ADD median"))
    assert direct.split()[3] == "direct"  # the path column
    assert "skipped-pod ADD median, agent path" not in out  # one budget, not two


def test_default_deployment_figures_missing_are_not_a_pass_even_with_direct_ones(tmp_path, capsys):
    for role, budgets in (("rss-agent", ["plugin peak RSS"]), ("add-skip-agent", ["skipped-pod ADD median"]),
                          ("concurrent-64-agent", ["64 concurrent ADDs", "64-ADD burst wall time"])):
        rc, out = run(tmp_path, without(role), capsys)
        assert rc == 1, role
        for budget in budgets:
            assert status(out, budget) == "MISSING", out
    assert "direct path (information, concurrent-64)" in out  # still printed beside the MISSING


def test_a_failed_add_in_the_direct_burst_is_not_information(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "concurrent-64", failures=2), capsys)
    assert rc == 1
    assert status(out, "64 concurrent ADDs") == "FAIL"
    assert "(2 of 192 failed)" in out


def test_skip_is_compared_with_upstreams_add_of_the_same_pod_not_our_redirect(tmp_path, capsys):
    # 8 ms skipped vs our 10 ms redirect would be 0.8; against Go's 40 ms ADD of that pod it is 0.2.
    rc, out = run(tmp_path, without("add-skip-upstream-go"), capsys)
    assert rc == 1
    assert status(out, "skipped-pod ADD median") == "MISSING"
    assert "not measured: add-skip-upstream-go" in out


def test_burst_slower_than_a_quarter_of_upstreams_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "concurrent-64-agent", median_ms=1100.0), capsys)
    assert rc == 1
    assert status(out, "64 concurrent ADDs") == "PASS"  # all succeeded
    assert status(out, "64-ADD burst wall time") == "FAIL"
    rc, out = run(tmp_path, without("concurrent-64-upstream-go"), capsys)
    assert rc == 1
    assert status(out, "64-ADD burst wall time") == "MISSING"


def test_rss_over_15_mib_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "rss-agent", peak_rss_kb=15 * 1024 + 1), capsys)
    assert rc == 1
    assert status(out, "plugin peak RSS") == "FAIL"


def test_concurrent_failure_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "concurrent-64-agent", failures=1), capsys)
    assert rc == 1
    assert status(out, "64 concurrent ADDs") == "FAIL"
    assert "191/192 ok" in out


def test_markdown_output(tmp_path, capsys):
    md = tmp_path / "out.md"
    rc, _ = run(tmp_path, healthy(), capsys, "--markdown", str(md))
    assert rc == 0
    text = md.read_text()
    assert "| budget | path | measured | limit | detail | status |" in text
    assert "| skipped-pod ADD median | agent (chart default) | 4.0 ms |" in text
    assert "| bench_add_redirected | add-direct | 10.00 |" in text


@pytest.mark.parametrize("content", ["not json", json.dumps({"no": "benchmarks"}),
                                     json.dumps({"benchmarks": [{"name": "x", "stats": {}}]})])
def test_unusable_input_exits_2(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert check_budgets.main([str(path)]) == 2
    assert "check_budgets:" in capsys.readouterr().err


def paired(medians: dict, rounds: int = 25) -> dict:
    return bench("bench_add_paired", sum(medians.values()), "paired-add",
                 paired_medians_ms=medians, paired_rounds=rounds)


def test_paired_medians_win_over_separate_benchmarks(tmp_path, capsys):
    # The separate benchmarks say direct (20) < Go (40); the paired run, where both saw the
    # same load, says direct 45 > Go 40: the paired figure decides.
    benchmarks = healthy() + [paired({"add-direct": 45.0, "add-skip": 10.0, "add-upstream-go": 40.0,
                                      "add-skip-upstream-go": 42.0, "baseline-upstream-pipeline": 12.0,
                                      "add-skip-agent": 10.0})]
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 1
    assert status(out, "direct-path ADD median") == "FAIL"
    assert "ratio 1.12 (paired, 25 interleaved rounds)" in out
    assert status(out, "skipped-pod ADD median") == "PASS"  # 10 / 42 from the paired run
    assert "ratio 0.24 (paired" in out


def test_agent_ratio_chained_through_the_paired_direct_figure(tmp_path, capsys):
    benchmarks = replace(healthy(), "add-agent", median_vs_direct_same_run=0.4)
    benchmarks.append(paired({"add-direct": 12.0, "add-skip": 10.0, "add-upstream-go": 40.0}))
    rc, out = run(tmp_path, benchmarks, capsys)
    # agent/Go = 0.4 (agent/direct, same run) x 0.3 (direct/Go, paired) = 0.12 <= 0.15
    assert status(out, "agent-path ADD median") == "PASS", out
    assert "ratio 0.12 (chained: 0.400" in out
    benchmarks = replace(benchmarks, "add-agent", median_vs_direct_same_run=0.6)
    rc, out = run(tmp_path, benchmarks, capsys)
    assert status(out, "agent-path ADD median") == "FAIL"  # 0.6 x 0.3 = 0.18
    assert rc == 1


def test_paired_without_go_falls_back_to_baseline_2(tmp_path, capsys):
    benchmarks = without("add-upstream-go")
    benchmarks.append(paired({"add-direct": 3.0, "add-skip": 4.0, "baseline-upstream-pipeline": 12.0}))
    rc, out = run(tmp_path, benchmarks, capsys)
    assert status(out, "direct-path ADD median") == "PASS"
    assert "reference is baseline-upstream-pipeline (add-upstream-go was not measured)" in out


def test_phase_table_puts_each_phase_next_to_its_floor(tmp_path, capsys):
    phases = bench("bench_phases", 60.0, "phases", phase_rounds=20,
                   phases_direct_ms={"interpreter": 14.0, "imports": 9.5, "commit": 1.2, "wall": 45.0},
                   floors_direct_ms={"interpreter": 12.5, "interpreter_sh": 13.25, "imports": 2.0, "commit": 0.5,
                                     "imports_what": "3 compiled modules: _json _ssl _socket"},
                   phases_agent_ms={"interpreter": 14.0, "agent_work": 1.5, "wall": 25.0},
                   floors_agent_ms={"interpreter": 12.5})
    md = tmp_path / "out.md"
    rc, out = run(tmp_path, healthy() + [phases], capsys, "--markdown", str(md))
    assert rc == 0, out
    text = md.read_text()
    assert "| interpreter start (fork, compiled front, exec, init) | 14.00 | 12.50 | 1.50 |" in text
    assert "through the front 12.50 ms, through the #!/bin/sh launcher it replaced 13.25 ms" in text
    assert "| imports before the pod GET (module archive included) | 9.50 | 2.00 | 7.50 |" in text
    assert "| setns + commit | 1.20 | 0.50 | 0.70 |" in text
    assert "| agent: decode, decision, rules, addresses, commit (agent's clock) | 1.50 | - | - |" in text
    assert "Phases of the direct path (20 interleaved rounds" in text
    assert "imports floor: 3 compiled modules" in text
    assert "phases_direct_ms" not in text  # the dicts are tables, not info-cell noise


def test_paired_agent_figure_wins_over_the_chained_one(tmp_path, capsys):
    # The chained ratio would be 0.4 x 0.3 = 0.12 (pass); the paired agent ADD says 8 / 40.
    benchmarks = replace(healthy(), "add-agent", median_vs_direct_same_run=0.4)
    benchmarks.append(paired({"add-direct": 12.0, "add-skip": 10.0, "add-upstream-go": 40.0, "add-agent": 8.0}))
    rc, out = run(tmp_path, benchmarks, capsys)
    assert status(out, "agent-path ADD median") == "FAIL", out
    assert "ratio 0.20 (paired, 25 interleaved rounds)" in out


def test_sandbox_added_latency_budgets(tmp_path, capsys):
    rc, out = run(tmp_path, healthy(), capsys)
    assert rc == 0, out
    assert status(out, "pod sandbox: direct path added latency") == "PASS"
    assert "ratio 0.10 (paired, 20 rounds; primary alone 100.0 ms median)" in out  # +10 / +100
    assert status(out, "pod sandbox: agent path added latency") == "PASS"  # +2 / +100
    assert "+ istio-cni (upstream Go)" in out and "+100.0" in out  # the per-variant table


@pytest.mark.parametrize(("direct", "agent", "failed"), [(126.0, 102.0, "direct"), (110.0, 109.0, "agent")])
def test_sandbox_added_latency_over_the_ratio_fails(tmp_path, capsys, direct, agent, failed):
    # Limits: direct +26 > 0.25 x +100; agent +9 > 0.08 x +100. The absolute medians do not matter.
    benchmarks = [b for b in healthy() if b["extra_info"]["role"] != "sandbox-paired"]
    benchmarks.append(sandbox({"primary": 100.0, "direct": direct, "agent": agent, "upstream-go": 200.0}))
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 1
    assert status(out, f"pod sandbox: {failed} path added latency") == "FAIL", out


def test_sandbox_not_measured_is_not_a_pass(tmp_path, capsys):
    rc, out = run(tmp_path, without("sandbox-paired"), capsys)
    assert rc == 1
    assert status(out, "pod sandbox: direct path added latency") == "MISSING"
    assert status(out, "pod sandbox: agent path added latency") == "MISSING"


def test_api_pod_to_running_table_is_information_only(tmp_path, capsys):
    api = bench("bench_pod_create_to_running_paired", 9000.0, "pod-running-paired", api_pod_rounds=5,
                api_pod_medians_ms={"primary": 1500.0, "direct": 1560.0, "agent": 1510.0, "upstream-go": 1700.0},
                api_pod_added_ms={"direct": 55.0, "agent": 8.0, "upstream-go": 190.0})
    rc, out = run(tmp_path, healthy() + [api], capsys)
    assert rc == 0, out  # no budget on it
    assert "Pod creation through the API to Running and ready, same variants (information; 5 paired rounds)" in out
    assert "+190" in out and "api_pod_medians_ms" not in out
