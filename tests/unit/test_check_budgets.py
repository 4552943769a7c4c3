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
        bench("bench_add_redirected", 20.0, "add-direct"),
        bench("bench_add_skipped_pod", 8.0, "add-skip"),
        bench("bench_add_upstream_go", 40.0, "add-upstream-go"),
        bench("bench_agent_add", 5.0, "add-agent"),
        bench("bench_baseline_upstream_pipeline", 15.0, "baseline-upstream-pipeline"),
        bench("bench_peak_rss_ours", 20.0, "rss-direct", peak_rss_kb=20 * 1024),
        bench("bench_add_concurrent_64", 900.0, "concurrent-64", execs=192, failures=0, p99_ms=700.0),
    ]


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
                   "plugin peak RSS", "64 concurrent ADDs"):
        assert status(out, budget) == "PASS", out
    assert "ratio 0.50" in out  # direct 20 ms / Go 40 ms
    assert "all budgets met" in out


def test_direct_slower_than_go_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "add-direct", median_ms=41.0), capsys)
    assert rc == 1
    assert status(out, "direct-path ADD median") == "FAIL"
    assert "ratio 1.02" in out


def test_equal_to_limit_passes(tmp_path, capsys):
    benchmarks = replace(healthy(), "add-direct", median_ms=40.0)
    benchmarks = replace(benchmarks, "add-skip", median_ms=20.0)
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 0, out


def test_reference_falls_back_to_baseline_2_and_says_so(tmp_path, capsys):
    benchmarks = without("add-upstream-go")
    rc, out = run(tmp_path, benchmarks, capsys)
    # direct 20 ms > baseline 2 at 15 ms: the fallback reference is really applied
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
    rc, out = run(tmp_path, replace(healthy(), "add-agent", median_ms=21.0), capsys)
    assert rc == 1
    assert status(out, "agent-path ADD median") == "FAIL"


def test_skip_not_cheap_enough_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "add-skip", median_ms=11.0), capsys)
    assert rc == 1
    assert status(out, "skipped-pod ADD median") == "FAIL"


def test_rss_over_30_mib_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "rss-direct", peak_rss_kb=30 * 1024 + 1), capsys)
    assert rc == 1
    assert status(out, "plugin peak RSS") == "FAIL"


def test_concurrent_failure_fails(tmp_path, capsys):
    rc, out = run(tmp_path, replace(healthy(), "concurrent-64", failures=1), capsys)
    assert rc == 1
    assert status(out, "64 concurrent ADDs") == "FAIL"
    assert "191/192 ok" in out


def test_markdown_output(tmp_path, capsys):
    md = tmp_path / "out.md"
    rc, _ = run(tmp_path, healthy(), capsys, "--markdown", str(md))
    assert rc == 0
    text = md.read_text()
    assert "| budget | measured | limit | detail | status |" in text
    assert "| bench_add_redirected | add-direct | 20.00 |" in text


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
                                      "baseline-upstream-pipeline": 12.0})]
    rc, out = run(tmp_path, benchmarks, capsys)
    assert rc == 1
    assert status(out, "direct-path ADD median") == "FAIL"
    assert "ratio 1.12 (paired, 25 interleaved rounds)" in out
    assert status(out, "skipped-pod ADD median") == "PASS"  # 10 / 45 from the paired run


def test_agent_ratio_chained_through_the_paired_direct_figure(tmp_path, capsys):
    benchmarks = replace(healthy(), "add-agent", median_vs_direct_same_run=0.6)
    benchmarks.append(paired({"add-direct": 30.0, "add-skip": 10.0, "add-upstream-go": 40.0}))
    rc, out = run(tmp_path, benchmarks, capsys)
    # agent/Go = 0.6 (agent/direct, same run) x 0.75 (direct/Go, paired) = 0.45 <= 0.5
    assert status(out, "agent-path ADD median") == "PASS", out
    assert "ratio 0.45 (chained: 0.600" in out
    benchmarks = replace(benchmarks, "add-agent", median_vs_direct_same_run=0.7)
    rc, out = run(tmp_path, benchmarks, capsys)
    assert status(out, "agent-path ADD median") == "FAIL"  # 0.7 x 0.75 = 0.525
    assert rc == 1


def test_paired_without_go_falls_back_to_baseline_2(tmp_path, capsys):
    benchmarks = without("add-upstream-go")
    benchmarks.append(paired({"add-direct": 10.0, "add-skip": 4.0, "baseline-upstream-pipeline": 12.0}))
    rc, out = run(tmp_path, benchmarks, capsys)
    assert status(out, "direct-path ADD median") == "PASS"
    assert "reference is baseline-upstream-pipeline (add-upstream-go was not measured)" in out
