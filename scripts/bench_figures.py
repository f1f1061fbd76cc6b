"""The benchmark's pure parts: wrk's output, CPU time from /proc, medians over rounds, the report.

No I/O here (scripts/bench.py reads the files and runs the processes), so tests/unit/test_bench_figures.py
checks all of it without sockets or subprocesses.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The targets for one sidecar process (fast-path issue, "Must show").
CPU_US_TARGET = 45.0  # CPU µs per forwarded request at 16 connections, at most
RATE_RATIO_TARGET = 0.5  # req/s at 16 connections, at least this times nginx-proxy's
ADDED_P50_MS_TARGET = 0.10  # p50 at 1 connection, at most this above direct
IDLE_RSS_MIB_TARGET = 50.0  # RSS after start, before load (MiB)

DIRECT = "direct"
NGINX_PROXY = "nginx-proxy"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = re.compile(r"^\s*(?P<value>[0-9.]+)(?P<unit>us|ms|s|m|h)\s*$")


class WrkOutputError(ValueError):
    """wrk printed something this parser does not understand."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rate: float  # requests per second, as wrk reports it
    p50_ms: float
    p99_ms: float
    non_2xx: int  # wrk's "Non-2xx or 3xx responses" (it counts status >= 400)
    socket_errors: int  # connect + read + write + timeout
    bad_status: int | None  # from bench's Lua `response` hook (status != 200), when it ran


def duration_ms(text: str) -> float:
    """wrk's latency figure ("62.00us", "1.23ms", "2.00s", "1.00m") in milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise WrkOutputError(f"not a wrk duration: {text!r}")
    return float(match["value"]) * _UNITS[match["unit"]]


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise WrkOutputError(f"wrk output lacks {pattern!r}:\n{text}")
    return match


def parse_wrk(text: str) -> WrkResult:
    """The figures of one `wrk --latency` run (with or without bench's `done` line)."""
    total = _search(r"^\s*(\d+) requests in ([0-9.]+\w+),", text)
    rate = _search(r"^Requests/sec:\s*([0-9.]+)", text)
    p50 = _search(r"^\s*50%\s+(\S+)", text)
    p99 = _search(r"^\s*99%\s+(\S+)", text)
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses:\s*(\d+)", text, re.MULTILINE)
    errors = re.search(r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text, re.MULTILINE)
    bad = re.search(r"^bench: (\d+) responses with status != 200", text, re.MULTILINE)
    return WrkResult(
        requests=int(total[1]),
        seconds=duration_ms(total[2]) / 1e3,
        rate=float(rate[1]),
        p50_ms=duration_ms(p50[1]),
        p99_ms=duration_ms(p99[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        bad_status=int(bad[1]) if bad else None,
    )


def wrk_failures(result: WrkResult) -> list[str]:
    """Why this run's answers cannot be trusted (empty: every answer was a 200, no socket error)."""
    problems = []
    if result.requests == 0:
        problems.append("no request completed")
    if result.non_2xx:
        problems.append(f"{result.non_2xx} answers with status >= 400")
    if result.bad_status:
        problems.append(f"{result.bad_status} answers with status != 200")
    if result.socket_errors:
        problems.append(f"{result.socket_errors} socket errors")
    return problems


# /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so split after
# the last ")". Fields after it, 0-based: 0 state, 1 ppid, ..., 11 utime, 12 stime, 13 cutime, 14 cstime.
def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, CPU clock ticks) of one /proc/<pid>/stat line: utime + stime + cutime + cstime.

    The reaped children's time (cutime, cstime) is included, so a child that exits during a run moves
    its time to its parent instead of losing it.
    """
    _, sep, tail = text.rpartition(")")
    fields = tail.split()
    if not sep or len(fields) < 15:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return int(fields[1]), sum(int(fields[i]) for i in (11, 12, 13, 14))


def descendants(root: int, parents: Mapping[int, int]) -> set[int]:
    """`root` and every process below it, given {pid: ppid} of all processes."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def busy_share(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU seconds per wall second (a load generator near 1.0 per thread may be the limit)."""
    return cpu_seconds / wall_seconds if wall_seconds > 0 else math.nan


def cpu_us_per_request(before: Mapping[int, int], after: Mapping[int, int], clk_tck: int, requests: int) -> float:
    """CPU µs per request of a process tree from two samples of {pid: ticks}.

    A process present only in `after` started during the run: all its ticks count. One present only in
    `before` ended (and its time moved to a parent's cutime, or was lost with an unreaped zombie).
    """
    if requests <= 0:
        return math.nan
    ticks = sum(after[pid] - before.get(pid, 0) for pid in after)
    return ticks / clk_tck * 1e6 / requests


@dataclass(frozen=True)
class Sample:
    """One wrk run of one target at one connection count."""

    target: str
    connections: int
    wrk: WrkResult
    cpu_us: float  # the proxy's (for direct: the upstream nginx's) CPU µs per request
    peak_rss_kib: int | None  # VmHWM summed over the process tree, after the run
    wrk_busy: float = math.nan  # wrk's CPU seconds per second of its run (1.0: one core flat out)


@dataclass(frozen=True)
class Cell:
    """Medians over rounds of one target at one connection count."""

    target: str
    connections: int
    rounds: int
    requests: int  # total over rounds
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    peak_rss_kib: int | None  # the largest over rounds
    wrk_busy: float = math.nan


def summarize(samples: Iterable[Sample]) -> list[Cell]:
    """One Cell per (target, connections), in first-seen order, each figure the median over rounds."""
    groups: dict[tuple[str, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.target, sample.connections), []).append(sample)
    return [_cell(target, connections, group) for (target, connections), group in groups.items()]


def _cell(target: str, connections: int, group: Sequence[Sample]) -> Cell:
    peaks = [s.peak_rss_kib for s in group if s.peak_rss_kib is not None]
    return Cell(
        target=target,
        connections=connections,
        rounds=len(group),
        requests=sum(s.wrk.requests for s in group),
        rate=statistics.median(s.wrk.rate for s in group),
        p50_ms=statistics.median(s.wrk.p50_ms for s in group),
        p99_ms=statistics.median(s.wrk.p99_ms for s in group),
        cpu_us=statistics.median(s.cpu_us for s in group),
        peak_rss_kib=max(peaks) if peaks else None,
        wrk_busy=statistics.median(s.wrk_busy for s in group),
    )


@dataclass(frozen=True)
class Ratios:
    """The issue's comparisons for one target; None where a needed cell is missing."""

    target: str
    rate_vs_nginx_proxy: float | None  # at 16 connections
    added_p50_ms: float | None  # over direct, at 1 connection
    cpu_us: float | None  # at 16 connections
    idle_rss_mib: float | None  # sidecars only


def ratios(cells: Sequence[Cell], idle_rss_kib: Mapping[str, int | None], many: int = 16) -> list[Ratios]:
    """Ratios for every target but direct. `many` is the larger connection count (16)."""
    by_key = {(c.target, c.connections): c for c in cells}
    proxy_many, direct_one = by_key.get((NGINX_PROXY, many)), by_key.get((DIRECT, 1))
    rows = []
    for target in dict.fromkeys(c.target for c in cells):
        if target == DIRECT:
            continue
        at_many, at_one = by_key.get((target, many)), by_key.get((target, 1))
        idle = idle_rss_kib.get(target)
        relative = at_many.rate / proxy_many.rate if at_many and proxy_many and proxy_many.rate else None
        rows.append(
            Ratios(
                target=target,
                rate_vs_nginx_proxy=relative,
                added_p50_ms=at_one.p50_ms - direct_one.p50_ms if at_one and direct_one else None,
                cpu_us=at_many.cpu_us if at_many else None,
                idle_rss_mib=idle / 1024 if idle is not None else None,
            )
        )
    return rows


def verdicts(row: Ratios) -> dict[str, bool | None]:
    """The issue's four targets for one row: True pass, False fail, None not measured."""

    def check(value: float | None, ok: bool) -> bool | None:
        return None if value is None or math.isnan(value) else ok

    cpu, rate, p50, idle = row.cpu_us, row.rate_vs_nginx_proxy, row.added_p50_ms, row.idle_rss_mib
    return {
        "cpu": check(cpu, cpu is not None and cpu <= CPU_US_TARGET),
        "rate": check(rate, rate is not None and rate >= RATE_RATIO_TARGET),
        "p50": check(p50, p50 is not None and p50 <= ADDED_P50_MS_TARGET),
        "idle_rss": check(idle, idle is not None and idle <= IDLE_RSS_MIB_TARGET),
    }


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" pass" if ok else " FAIL")


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, fmt)


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


CELL_HEADER = ("target", "conns", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB", "wrk CPU %")
RATIO_HEADER = ("target", "req/s vs nginx-proxy @16", "p50 over direct @1 (ms)", "CPU µs/req @16", "idle RSS MiB")


def cell_rows(cells: Sequence[Cell]) -> list[tuple[str, ...]]:
    return [
        (
            c.target,
            str(c.connections),
            f"{c.rate:.0f}",
            f"{c.p50_ms:.3f}",
            f"{c.p99_ms:.3f}",
            _num(c.cpu_us, ".1f"),
            _mib(c.peak_rss_kib),
            _num(c.wrk_busy * 100, ".0f"),
        )
        for c in cells
    ]


def ratio_rows(rows: Sequence[Ratios], judged: Iterable[str]) -> list[tuple[str, ...]]:
    """Ratio rows; targets in `judged` (the sidecars) carry pass/FAIL against the issue's targets."""
    judged = set(judged)
    out = []
    for row in rows:
        marks = verdicts(row) if row.target in judged else dict.fromkeys(("cpu", "rate", "p50", "idle_rss"))
        out.append(
            (
                row.target,
                _num(row.rate_vs_nginx_proxy, ".2f") + _mark(marks["rate"]),
                _num(row.added_p50_ms, "+.3f") + _mark(marks["p50"]),
                _num(row.cpu_us, ".1f") + _mark(marks["cpu"]),
                _num(row.idle_rss_mib, ".1f") + _mark(marks["idle_rss"]),
            )
        )
    return out


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets_line() -> str:
    return (
        f"targets for one sidecar process: CPU <= {CPU_US_TARGET:g} µs/req @16, "
        f"req/s >= {RATE_RATIO_TARGET:g}x nginx-proxy @16, p50 <= {ADDED_P50_MS_TARGET:.2f} ms over direct @1, "
        f"idle RSS <= {IDLE_RSS_MIB_TARGET:g} MiB"
    )
