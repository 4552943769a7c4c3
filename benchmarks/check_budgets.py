"""Check the pod-start budgets in one pytest-benchmark JSON run; print the tables.

    python benchmarks/check_budgets.py RUN.json [--markdown OUT.md]

Budgets are ratios between figures of the same run (absolute times are information only,
because this machine's speed moves by tens of percent between runs):

* direct-path ADD median  <= 0.30 x upstream's Go plugin median (baseline 2, the upstream
  restore pipeline, when the Go plugin was not measured: the table says so)
* agent-path ADD median   <= 0.15 x the same reference
* skipped-pod ADD median  <= 0.25 x upstream's Go plugin ADD of the same pod (no sidecar)
* plugin peak RSS         <= 15 MiB (``peak_rss_kb`` of ``rss-agent``: max over its rounds)
* 64 concurrent ADDs      every exec succeeded (CPU seconds per ADD, the agent's included)
* 64-ADD burst wall time  <= 0.25 x upstream's Go plugin burst (median of the bursts)
* pod sandbox, direct     latency our plugin adds to ``RunPodSandbox`` (CRI, real node) over the
                          primary CNI alone <= 0.25 x what upstream's Go plugin adds
* pod sandbox, agent      the same through the node agent <= 0.08 x (bench_sandbox.py)

Which path (the budget table's "path" column): the issue names the path of the first two.
The skipped-pod, RSS and both burst budgets name none, so they are evaluated on the chart's
default deployment, which runs the node agent (values.yaml ``agent.enabled: true``): our
plugin through the compiled front with a live agent (``add-skip-agent``, ``rss-agent``,
``concurrent-64-agent``). The direct-path figure of each (``add-skip``, ``rss-direct``,
``concurrent-64``) is printed next to it as information: a direct-path exec cannot go below
the bundled interpreter's start (~12 ms, about 0.25x of Go's ~50 ms skipped ADD by itself).

The ``phases`` benchmark (bench_phases.py), when present, adds the phase table of the direct
and the agent path, each phase next to its floor.

Benchmarks are found by ``extra_info["role"]`` (benchmarks/conftest.py ``record``); a budget
whose figure is missing counts as failed ("not measured" is not "within budget"). Ratios come
from the ``paired-add`` benchmark when it measured both sides (variants interleaved round by
round, so both saw the same machine load; the agent ADD is one of them since issue 18); a run
without a paired agent figure chains the agent's: its own same-run agent/direct ratio
(bench_agent.py) times the paired direct/reference ratio. Otherwise the
separate benchmarks' medians are compared, and the detail column says which was used.
Exit status: 0 all budgets met, 1 a budget missed or not measured, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REFERENCE_ROLES = ("add-upstream-go", "baseline-upstream-pipeline")
RSS_LIMIT_KB = 15 * 1024
# The chart's default deployment runs the node agent (see the docstring): budgets whose issue
# text names no path are evaluated there, with the direct-path figure beside them.
DIRECT, AGENT, DEFAULT = "direct", "agent", "agent (chart default)"
RSS_ROLE, RSS_DIRECT_ROLE = "rss-agent", "rss-direct"
BURST_ROLE, BURST_DIRECT_ROLE = "concurrent-64-agent", "concurrent-64"


class Budget:
    """``role``'s median must be at most ``max_ratio`` x the first present reference role;
    ``info_role``: the same figure on the other path, printed beside it (no budget)."""

    def __init__(self, title: str, role: str, references: tuple, max_ratio: float, path: str,
                 info_role: str = "") -> None:
        self.title, self.role, self.references, self.max_ratio = title, role, references, max_ratio
        self.path, self.info_role = path, info_role


RATIO_BUDGETS = (
    Budget("direct-path ADD median", "add-direct", REFERENCE_ROLES, 0.30, DIRECT),
    Budget("agent-path ADD median", "add-agent", REFERENCE_ROLES, 0.15, AGENT),
    # The front answers a skipped pod through the agent without starting the interpreter
    # (src/front/); a direct-path exec pays the interpreter's start (~12 ms = 0.25x Go) alone.
    Budget("skipped-pod ADD median", "add-skip-agent", ("add-skip-upstream-go",), 0.25, DEFAULT, "add-skip"),
)
BURST_BUDGET = Budget("64-ADD burst wall time", BURST_ROLE, ("concurrent-64-upstream-go",), 0.25, DEFAULT,
                      BURST_DIRECT_ROLE)

# bench_sandbox.py: latency added to RunPodSandbox over the primary CNI alone, each variant
# against what upstream's Go plugin adds (paired rounds). (title, variant, max ratio)
SANDBOX_ROLE = "sandbox-paired"
SANDBOX_BUDGETS = (
    ("pod sandbox: direct path added latency", "direct", 0.25),
    ("pod sandbox: agent path added latency", "agent", 0.08),
)
SANDBOX_VARIANTS = (
    ("primary", "primary CNI alone (bridge)"),
    ("direct", "+ istio-cni (this project), direct path"),
    ("agent", "+ istio-cni (this project), node agent path"),
    ("upstream-go", "+ istio-cni (upstream Go)"),
)


# The phase table's rows (bench_phases.py keys): key, title. Floors: see bench_phases.py.
PHASE_ROWS_DIRECT = (
    ("interpreter", "interpreter start (fork, compiled front, exec, init)"),
    ("imports", "imports before the pod GET (module archive included)"),
    ("parse", "netconf/CNI_ARGS parsing, prevResult"),
    ("netns_check", "CNI_NETNS check"),
    ("kubeconfig", "kubeconfig (read + decode)"),
    ("tls_context", "TLS parameters (CA decoded; the context is made on the C thread)"),
    ("exchange", "pod GET (the front's child's, else on the C thread), waited for"),
    ("get", "pod GET on this thread (client, answer's HTTP, JSON)"),
    ("after_imports", "imports after the pod GET (what the wait did not hide)"),
    ("ahead", "  of the exchange: imports done while the API server works (import-ahead)"),
    ("cthread_start", "  of the exchange, C thread: started"),
    ("cthread_context", "  of the exchange, C thread: client context taken (waits for the warm-up's)"),
    ("cthread_connected", "  of the exchange, C thread: session file, trust if needed, TCP connect"),
    ("cthread_handshake", "  of the exchange, C thread: TLS handshake"),
    ("cthread_answer", "  of the exchange, C thread: request to the answer's first bytes (API server)"),
    ("cthread_done", "  of the exchange, C thread: rest of the answer, until the server closes"),
    ("prefetch_exchange", "  the front's child process: OpenSSL set-up, connect, handshake, pod GET"),
    ("prefetch_ready", "  the front's child process: answer there, ms after the interpreter's start"),
    ("warm_started", "OpenSSL warm-up thread started, after the interpreter's start"),
    ("warm", "OpenSSL warm-up thread: libssl loaded, initialised, first context made"),
    ("decide", "decision and rule build"),
    ("addresses", "pod netns addresses (netlink)"),
    ("commit", "setns + commit"),
    ("other", "rest (dispatch, logging, between phases)"),
    ("exit", "result and exit"),
    ("exit_normal", "result and exit, with interpreter finalisation (before the os._exit lever)"),
    ("probe", "(probe overhead, not in a real ADD)"),
)
_DIRECT_TITLE = dict(PHASE_ROWS_DIRECT)
PHASE_ROWS_AGENT = (
    ("interpreter", _DIRECT_TITLE["interpreter"]),
    ("imports", "imports (every module of this ADD)"),
    ("parse", _DIRECT_TITLE["parse"]),
    ("netns_check", _DIRECT_TITLE["netns_check"]),
    ("agent_work", "agent: decode, decision, rules, addresses, commit (agent's clock)"),
    ("agent_channel", "agent exchange minus the agent's work (socket, HTTP, JSON, threads)"),
    ("other", _DIRECT_TITLE["other"]),
    ("exit", _DIRECT_TITLE["exit"]),
    ("probe", _DIRECT_TITLE["probe"]),
)

# Ratios printed for information (no budget): numerator role, denominator role.
INFO_RATIOS = (
    ("direct ADD / upstream Go plugin", "add-direct", "add-upstream-go"),
    ("direct ADD / baseline 2 (upstream restore pipeline)", "add-direct", "baseline-upstream-pipeline"),
    ("direct ADD / baseline 1 (2019 script)", "add-direct", "baseline-2019"),
    ("agent ADD / direct ADD", "add-agent", "add-direct"),
    ("skipped-pod ADD / our redirected ADD", "add-skip", "add-direct"),
    ("in-process libiptc commit / iptables-restore exec", "nf-iptc", "nf-exec-iptables-restore"),
    ("in-process libnftables commit / nft -f exec", "nf-nft", "nf-exec-nft"),
)


class BadInput(ValueError):
    """The file is not a usable pytest-benchmark JSON run."""


class Row:
    __slots__ = ("budget", "measured", "limit", "detail", "status", "path")

    def __init__(self, budget, measured, limit, detail, status, path=""):
        self.budget, self.measured, self.limit, self.detail, self.status = budget, measured, limit, detail, status
        self.path = path  # which ADD path the figure comes from (DIRECT, AGENT, DEFAULT)


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read benchmark JSON {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BadInput(f"{path} is not pytest-benchmark JSON (no 'benchmarks' list)")
    for i, b in enumerate(data["benchmarks"]):
        stats = b.get("stats") if isinstance(b, dict) else None
        if not isinstance(stats, dict) or not all(isinstance(stats.get(k), (int, float))
                                                  for k in ("median", "min", "max", "rounds")):
            raise BadInput(f"{path}: benchmark #{i} ({b.get('name') if isinstance(b, dict) else b!r}) "
                           "lacks stats median/min/max/rounds")
        b.setdefault("name", f"#{i}")
    return data


def by_role(benchmarks: list) -> tuple[dict, list[str]]:
    """role -> benchmark; plus notes (duplicates, agent benchmark matched by name)."""
    roles, notes = {}, []
    for b in benchmarks:
        role = (b.get("extra_info") or {}).get("role")
        if not role:
            continue
        if role in roles:
            notes.append(f"role {role!r} appears twice ({roles[role]['name']}, {b['name']}); using the last")
        roles[role] = b
    if "add-agent" not in roles:
        # bench_agent.py may predate the role convention: take an unambiguous agent ADD by name.
        named = [b for b in benchmarks if "agent" in b["name"] and "direct" not in b["name"]
                 and any(w in b["name"] for w in ("add", "path")) and "rss" not in b["name"]
                 and not (b.get("extra_info") or {}).get("role")]
        if len(named) == 1:
            roles["add-agent"] = named[0]
            notes.append(f"agent-path ADD taken by name: {named[0]['name']} (set extra_info role='add-agent')")
    return roles, notes


def median_ms(b: dict) -> float:
    return b["stats"]["median"] * 1e3


def _paired_medians(roles: dict) -> dict:
    """role -> median ms from the paired benchmark; empty when it did not run."""
    return (roles.get("paired-add") or {}).get("extra_info", {}).get("paired_medians_ms") or {}


def _ratio(roles: dict, role: str, ref: str) -> tuple[float, float, float, str] | None:
    """(mine ms, reference ms, ratio, how) from the best source available, or None."""
    paired = _paired_medians(roles)
    if role in paired and ref in paired:
        n = roles["paired-add"]["extra_info"].get("paired_rounds", "?")
        return paired[role], paired[ref], paired[role] / paired[ref], f"paired, {n} interleaved rounds"
    chained = (roles.get(role) or {}).get("extra_info", {}).get("median_vs_direct_same_run")
    if chained is not None and ref == "add-direct":
        return median_ms(roles[role]), median_ms(roles[role]) / chained, chained, "same run (its own benchmark)"
    if chained is not None and "add-direct" in paired and ref in paired:
        direct_over_ref = paired["add-direct"] / paired[ref]
        return (median_ms(roles[role]), paired[ref], chained * direct_over_ref,
                f"chained: {chained:.3f} ({role}/direct, same run) x {direct_over_ref:.3f} (direct/{ref}, paired)")
    if role in roles and ref in roles:
        mine, other = median_ms(roles[role]), median_ms(roles[ref])
        return mine, other, mine / other, "separate benchmarks"
    return None


def _ratio_row(roles: dict, present: set, budget: Budget, notes: list[str]) -> Row:
    ref_role = next((r for r in budget.references if r in present), None)
    got = _ratio(roles, budget.role, ref_role) if ref_role else None
    beside = _beside(roles, budget, ref_role)
    if got is None:
        missing = " / ".join(budget.references) if ref_role is None else budget.role
        return Row(budget.title, "-", f"<= {budget.max_ratio:g}x", f"not measured: {missing}{beside}", "MISSING",
                   budget.path)
    if ref_role != budget.references[0]:
        notes.append(f"{budget.title}: reference is {ref_role} ({budget.references[0]} was not measured)")
    mine, ref, ratio, how = got
    return Row(budget.title, f"{mine:.1f} ms", f"<= {budget.max_ratio:g}x {ref_role} ({ref:.1f} ms)",
               f"ratio {ratio:.2f} ({how}){beside}", "PASS" if ratio <= budget.max_ratio else "FAIL", budget.path)


def _beside(roles: dict, budget: Budget, ref_role: str | None) -> str:
    """The budget's figure on the direct path, for information ("" when not measured)."""
    got = _ratio(roles, budget.info_role, ref_role) if budget.info_role and ref_role else None
    if got is None:
        return ""
    mine, _ref, ratio, how = got
    return f"; direct path (information, {budget.info_role}): {mine:.1f} ms, ratio {ratio:.2f} ({how})"


def evaluate(data: dict) -> tuple[list[Row], list[str]]:
    roles, notes = by_role(data["benchmarks"])
    paired = _paired_medians(roles)
    present = set(roles) | set(paired)
    rows = []
    for budget in RATIO_BUDGETS:
        rows.append(_ratio_row(roles, present, budget, notes))
    rows.append(_rss_row(roles))
    rows.append(_burst_row(roles))
    rows.append(_ratio_row(roles, present, BURST_BUDGET, notes))
    paths = {title: variant for title, variant, _limit in SANDBOX_BUDGETS}
    for row in _sandbox_rows(roles):
        row.path = row.path or paths.get(row.budget, "")
        rows.append(row)
    return rows, notes


def _rss_row(roles: dict) -> Row:
    """Peak RSS of one exec on the default deployment (front + live agent); direct beside it."""
    limit = f"<= {RSS_LIMIT_KB / 1024:g} MiB"
    direct = (roles.get(RSS_DIRECT_ROLE) or {}).get("extra_info", {}).get("peak_rss_kb")
    info = (roles.get(RSS_ROLE) or {}).get("extra_info", {})
    beside = ""
    if isinstance(direct, (int, float)):
        beside = f"; direct path (information, {RSS_DIRECT_ROLE}): {direct / 1024:.1f} MiB"
    if isinstance(info.get("agent_rss_kb"), (int, float)):
        beside += f"; the agent process itself (information): {info['agent_rss_kb'] / 1024:.1f} MiB RSS"
    peak = info.get("peak_rss_kb")
    if not isinstance(peak, (int, float)):
        return Row("plugin peak RSS", "-", limit, f"not measured: peak_rss_kb of {RSS_ROLE}{beside}", "MISSING",
                   DEFAULT)
    return Row("plugin peak RSS", f"{peak / 1024:.1f} MiB", limit, f"max over rounds of {RSS_ROLE}{beside}",
               "PASS" if peak <= RSS_LIMIT_KB else "FAIL", DEFAULT)


def _burst_row(roles: dict) -> Row:
    """64 ADDs at once on the default deployment all succeed; every other burst as information
    (a failed ADD in our direct-path burst fails the row too: no failure is information)."""
    conc = roles.get(BURST_ROLE)
    if conc is None:
        return Row("64 concurrent ADDs", "-", "all succeed", f"not measured: {BURST_ROLE}", "MISSING", DEFAULT)
    info = conc["extra_info"]
    detail = f"p99 {info.get('p99_ms', float('nan')):.1f} ms, wall median {median_ms(conc):.0f} ms"
    detail += _cpu_note(info)
    ok = info.get("failures", 1) == 0 and info.get("execs", 0) > 0
    for label, role in (("direct path (information)", BURST_DIRECT_ROLE), ("upstream Go", "concurrent-64-upstream-go"),
                        ("baseline 2", "concurrent-64-baseline-upstream-pipeline")):
        if role in roles:
            other = roles[role]["extra_info"]
            detail += (f"; {label}: p99 {other.get('p99_ms', float('nan')):.1f} ms, "
                       f"wall {median_ms(roles[role]):.0f} ms" + _cpu_note(other))
            if role == BURST_DIRECT_ROLE and other.get("failures", 0):
                ok = False
                detail += f" ({other['failures']} of {other.get('execs', '?')} failed)"
    return Row("64 concurrent ADDs", f"{info.get('execs', 0) - info.get('failures', 0)}/{info.get('execs', 0)} ok",
               "all succeed", detail, "PASS" if ok else "FAIL", DEFAULT)


def _sandbox_rows(roles: dict) -> list[Row]:
    """Added RunPodSandbox latency of our plugin vs upstream's (bench_sandbox.py, paired)."""
    info = (roles.get(SANDBOX_ROLE) or {}).get("extra_info") or {}
    added = info.get("sandbox_added_ms") or {}
    primary = (info.get("sandbox_medians_ms") or {}).get("primary")
    rows = []
    for title, variant, limit in SANDBOX_BUDGETS:
        mine, ref = added.get(variant), added.get("upstream-go")
        if not isinstance(mine, (int, float)) or not isinstance(ref, (int, float)):
            rows.append(Row(title, "-", f"<= {limit:g}x upstream Go's added latency",
                            f"not measured: {SANDBOX_ROLE} ({variant}, upstream-go)", "MISSING"))
            continue
        how = f"paired, {info.get('sandbox_rounds', '?')} rounds; primary alone {primary} ms median"
        if ref <= 0:  # upstream added nothing measurable: no ratio can be formed
            rows.append(Row(title, f"{mine:+.1f} ms", f"<= {limit:g}x upstream Go's {ref:+.1f} ms",
                            f"upstream added no latency ({how})", "FAIL"))
            continue
        ratio = mine / ref
        rows.append(Row(title, f"{mine:+.1f} ms", f"<= {limit:g}x upstream Go's {ref:+.1f} ms",
                        f"ratio {ratio:.2f} ({how})", "PASS" if ratio <= limit else "FAIL"))
    return rows


def sandbox_table(data: dict, markdown: bool) -> list[str]:
    """bench_sandbox.py's per-variant RunPodSandbox figures (medians, p99, added)."""
    roles, _ = by_role(data["benchmarks"])
    info = (roles.get(SANDBOX_ROLE) or {}).get("extra_info") or {}
    medians, p99 = info.get("sandbox_medians_ms") or {}, info.get("sandbox_p99_ms") or {}
    if not medians:
        return []
    added = info.get("sandbox_added_ms") or {}
    rows = []
    for key, title in SANDBOX_VARIANTS:
        if key not in medians:
            continue
        plus = added.get(key)
        rows.append([title, f"{medians[key]:.1f}", f"{p99.get(key, float('nan')):.1f}",
                     "-" if plus is None else f"{plus:+.1f}"])
    out = ["", f"RunPodSandbox through the CRI on a real node ({info.get('sandbox_rounds', '?')} paired rounds, "
            f"rotating order; {info.get('runtime', '')})", "",
            _table(["variant", "median ms", "p99 ms", "added ms (median of per-round variant - primary)"], rows,
                   markdown)]
    api = (roles.get("pod-running-paired") or {}).get("extra_info") or {}
    if api.get("api_pod_medians_ms"):
        api_added = api.get("api_pod_added_ms") or {}
        api_rows = [[title, f"{api['api_pod_medians_ms'][key]:.0f}",
                     "-" if api_added.get(key) is None else f"{api_added[key]:+.0f}"]
                    for key, title in SANDBOX_VARIANTS if key in api["api_pod_medians_ms"]]
        out += ["", f"Pod creation through the API to Running and ready, same variants (information; "
                f"{api.get('api_pod_rounds', '?')} paired rounds)", "",
                _table(["variant", "median ms", "added ms (per-round, median)"], api_rows, markdown)]
    return out


def _cpu_note(info: dict) -> str:
    cpu = info.get("cpu_s_per_add")
    if not isinstance(cpu, (int, float)):
        return ""
    execs, agent = info.get("exec_cpu_s_per_add"), info.get("agent_cpu_s_per_add")
    if isinstance(execs, (int, float)) and isinstance(agent, (int, float)):
        return f", {cpu * 1e3:.1f} ms CPU per ADD (execs {execs * 1e3:.1f} + agent {agent * 1e3:.1f})"
    return f", {cpu * 1e3:.1f} ms CPU per ADD"


def phase_tables(data: dict, markdown: bool) -> list[str]:
    """The ``phases`` benchmark's tables: each phase's median next to its floor (same run)."""
    roles, _ = by_role(data["benchmarks"])
    info = (roles.get("phases") or {}).get("extra_info") or {}
    out = []
    for path, rows in (("direct", PHASE_ROWS_DIRECT), ("agent", PHASE_ROWS_AGENT)):
        phases, floors = info.get(f"phases_{path}_ms"), info.get(f"floors_{path}_ms") or {}
        if not phases:
            continue
        table = []
        for key, title in rows:
            if key not in phases:
                continue
            ms, floor = phases[key], floors.get(key)
            left = f"{ms - floor:.2f}" if isinstance(floor, (int, float)) else "-"
            table.append([title, f"{ms:.2f}", f"{floor:.2f}" if isinstance(floor, (int, float)) else "-", left])
        table.append(["whole ADD (probe launcher, median of rounds)", f"{phases.get('wall', float('nan')):.2f}",
                      "", ""])
        out += ["", f"Phases of the {path} path ({info.get('phase_rounds', '?')} interleaved rounds, medians; "
                f"rows do not add up exactly: each is its own median)", "",
                _table(["phase", "ms", "floor ms", "left to win ms"], table, markdown)]
        if floors.get("imports_what"):
            out += ["", f"- imports floor: {floors['imports_what']}"]
        numbers = (int, float)
        front = info.get("front_agent_wall_ms")
        if path == "agent" and isinstance(front, numbers):
            out += ["", f"- the same agent-path ADD through the installed compiled front, which answers it "
                    f"without the interpreter: {front:.2f} ms (median, same rounds)"]
        if isinstance(floors.get("interpreter_sh"), numbers) and isinstance(floors.get("interpreter"), numbers):
            out += [f"- bare interpreter start through the front {floors['interpreter']:.2f} ms, through the "
                    f"#!/bin/sh launcher it replaced {floors['interpreter_sh']:.2f} ms (same rounds)"]
    return out


def _info_cell(b: dict) -> str:
    info = dict(b.get("extra_info") or {})
    for k in ("role", "api_server_note", "paired_medians_ms", "phases_direct_ms", "phases_agent_ms",
              "floors_direct_ms", "floors_agent_ms", "sandbox_medians_ms", "sandbox_p99_ms", "sandbox_added_ms",
              "sandbox_medians_minus_primary_ms", "runtime", "api_pod_medians_ms", "api_pod_added_ms"):
        info.pop(k, None)
    parts = []
    if "peak_rss_kb" in info:
        parts.append(f"peak RSS {info.pop('peak_rss_kb') / 1024:.1f} MiB")
        info.pop("median_rss_kb", None)
    if "p99_ms" in info:
        parts.append(f"p99 {info.pop('p99_ms'):.1f} ms")
        info.pop("p50_ms", None)
        info.pop("max_ms", None)
    paired = (b.get("extra_info") or {}).get("paired_medians_ms")
    if paired:
        parts.append("medians " + ", ".join(f"{k} {v:.1f}" for k, v in paired.items()) + " ms")
    parts += [f"{k}={v}" for k, v in info.items()]
    return "; ".join(parts)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*r) for r in rows])


def info_ratios(data: dict) -> list[list[str]]:
    roles, _ = by_role(data["benchmarks"])
    out = []
    for title, a, b in INFO_RATIOS:
        got = _ratio(roles, a, b)
        if got:
            mine, ref, ratio, how = got
            out.append([title, f"{mine:.2f} / {ref:.2f} ms", f"{ratio:.3f}", how])
    return out


def report(data: dict, rows: list[Row], notes: list[str], markdown: bool = False) -> str:
    bench_rows = [[b["name"], (b.get("extra_info") or {}).get("role", ""), f"{median_ms(b):.2f}",
                   f"{b['stats']['min'] * 1e3:.2f}", f"{b['stats']['max'] * 1e3:.2f}",
                   str(b["stats"]["rounds"]), _info_cell(b)] for b in data["benchmarks"]]
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw", "?")
    parts = [
        f"Machine: {machine.get('node', '?')}, {cpu}, {(machine.get('cpu') or {}).get('count', '?')} CPUs, "
        f"{machine.get('system', '?')} {machine.get('release', '?')}, "
        f"Python {machine.get('python_version', '?')}; run at {data.get('datetime', '?')}",
        "",
        _table(["benchmark", "role", "median ms", "min ms", "max ms", "rounds", "info"], bench_rows, markdown),
        "",
        _table(["budget", "path", "measured", "limit", "detail", "status"],
               [[r.budget, r.path or "-", r.measured, r.limit, r.detail, r.status] for r in rows], markdown),
    ]
    ratios = info_ratios(data)
    if ratios:
        parts += ["", _table(["ratio (information, same run)", "medians", "ratio", "source"], ratios, markdown)]
    parts += phase_tables(data, markdown)
    parts += sandbox_table(data, markdown)
    apis = sorted({(b.get("extra_info") or {}).get("api_server_note") for b in data["benchmarks"]} - {None})
    notes = notes + [f"API server: {a}" for a in apis]
    if notes:
        parts += [""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown to this file")
    args = p.parse_args(argv)
    try:
        data = load(args.json)
        rows, notes = evaluate(data)
    except BadInput as e:
        print(f"check_budgets: {e}", file=sys.stderr)
        return 2
    print(report(data, rows, notes))
    if args.markdown:
        args.markdown.write_text(report(data, rows, notes, markdown=True))
    failed = [r.budget for r in rows if r.status != "PASS"]
    if failed:
        print(f"BUDGETS MISSED OR NOT MEASURED: {', '.join(failed)}")
        return 1
    print("all budgets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
