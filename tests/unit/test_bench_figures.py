"""The benchmark's pure parts (scripts/bench_figures.py): wrk's output, /proc CPU maths, medians, verdicts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "scripts"))  # scripts/ is not a package

from bench_figures import (
    CELL_HEADER,
    Cell,
    Sample,
    WrkOutputError,
    WrkResult,
    busy_share,
    cell_rows,
    cpu_us_per_request,
    descendants,
    duration_ms,
    markdown_table,
    parse_stat,
    parse_wrk,
    ratio_rows,
    ratios,
    summarize,
    text_table,
    verdicts,
    wrk_failures,
)

# Real wrk 4.1.0 output (Debian), POST script without hooks, 1 connection.
CLEAN = """Running 1s test @ https://127.0.0.1:18443/serving-endpoints/bench/invocations
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    61.68us  294.94us   4.08ms   98.04%
    Req/Sec    37.08k     2.23k   38.65k    81.82%
  Latency Distribution
     50%   24.00us
     75%   25.00us
     90%   26.00us
     99%    1.64ms
  40448 requests in 1.10s, 6.67MB read
Requests/sec:  36775.36
Transfer/sec:      6.07MB
"""

# Real output against a 404 path, with the bench's Lua status hook.
REFUSED = """Running 1s test @ https://127.0.0.1:18443/x
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   502.21us    1.22ms  10.93ms   89.97%
    Req/Sec    32.22k     7.58k   39.53k    70.00%
  Latency Distribution
     50%   74.00us
     75%  103.00us
     90%    1.73ms
     99%    6.84ms
  31984 requests in 1.00s, 9.39MB read
  Non-2xx or 3xx responses: 31984
Requests/sec:  31949.78
Transfer/sec:      9.38MB
bench: 31984 responses with status != 200
"""

SOCKET_ERRORS = CLEAN.replace(
    "  40448 requests in 1.10s, 6.67MB read\n",
    "  40448 requests in 1.10s, 6.67MB read\n  Socket errors: connect 0, read 3, write 1, timeout 2\n",
)


def test_a_clean_run_is_parsed_into_milliseconds_and_counts() -> None:
    result = parse_wrk(CLEAN)
    assert (result.requests, result.rate, result.non_2xx, result.socket_errors, result.bad_status) == (
        40448,
        36775.36,
        0,
        0,
        None,
    )
    assert result.seconds == pytest.approx(1.10)
    assert (result.p50_ms, result.p99_ms) == (pytest.approx(0.024), pytest.approx(1.64))
    assert wrk_failures(result) == []


def test_refused_answers_are_counted_both_ways_and_fail_the_run() -> None:
    result = parse_wrk(REFUSED)
    assert (result.non_2xx, result.bad_status, result.p50_ms) == (31984, 31984, pytest.approx(0.074))
    assert wrk_failures(result) == ["31984 answers with status >= 400", "31984 answers with status != 200"]


def test_socket_errors_are_summed_and_fail_the_run() -> None:
    result = parse_wrk(SOCKET_ERRORS)
    assert result.socket_errors == 6
    assert wrk_failures(result) == ["6 socket errors"]


def test_a_hook_that_saw_only_200s_passes() -> None:
    assert wrk_failures(parse_wrk(CLEAN + "bench: 0 responses with status != 200\n")) == []


def test_no_completed_request_fails_the_run() -> None:
    text = CLEAN.replace("40448 requests", "0 requests")
    assert wrk_failures(parse_wrk(text)) == ["no request completed"]


@pytest.mark.parametrize("missing", ["Requests/sec", "requests in", "50%", "99%"])
def test_output_without_a_needed_line_is_an_error_not_a_zero(missing: str) -> None:
    text = "\n".join(line for line in CLEAN.splitlines() if missing not in line)
    with pytest.raises(WrkOutputError):
        parse_wrk(text)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("24.00us", 0.024), ("1.64ms", 1.64), ("2.00s", 2000.0), ("1.50m", 90000.0), ("1.00h", 3600000.0)],
)
def test_durations_in_every_wrk_unit(text: str, ms: float) -> None:
    assert duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "12", "1.0ns", "abc", "-1ms"])
def test_unknown_durations_are_refused(text: str) -> None:
    with pytest.raises(WrkOutputError):
        duration_ms(text)


# A /proc/<pid>/stat line (Linux 6.x) for a process named "a) b c": the name has a space and ")".
STAT = (
    "4242 (a) b c) S 4200 4242 2981 0 -1 4194560 1500 0 0 0 "
    "700 300 40 20 20 0 3 0 48810 3133440 361 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
)


def test_stat_line_gives_ppid_and_ticks_including_reaped_children() -> None:
    assert parse_stat(STAT) == (4200, 700 + 300 + 40 + 20)


@pytest.mark.parametrize("text", ["", "4242 (x", "4242 (x) S 1 2 3"])
def test_a_truncated_stat_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="stat"):
        parse_stat(text)


def test_descendants_follow_every_level_and_nothing_else() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 21: 20, 30: 13}
    assert descendants(10, parents) == {10, 11, 12, 13, 30}
    assert descendants(21, parents) == {21}
    assert descendants(99, parents) == {99}  # gone already: itself only
    assert descendants(5, {5: 6, 6: 5}) == {5, 6}  # a scan racing pid reuse cannot loop forever


def test_cpu_per_request_counts_started_processes_whole() -> None:
    before = {10: 1000, 11: 500}
    after = {10: 1300, 11: 600, 12: 100}  # 12 started during the run
    # 500 ticks at 100 Hz = 5 s of CPU, over 100,000 requests = 50 µs each
    assert cpu_us_per_request(before, after, 100, 100_000) == pytest.approx(50.0)


def test_cpu_per_request_of_a_run_without_requests_is_not_a_number() -> None:
    assert math.isnan(cpu_us_per_request({1: 0}, {1: 5}, 100, 0))


def _wrk(rate: float, p50: float, p99: float, requests: int = 1000) -> WrkResult:
    return WrkResult(requests, 5.0, rate, p50, p99, 0, 0, None)


def _sample(
    target: str, conns: int, rate: float, p50: float, cpu: float, rss: int | None = 1024, busy: float = 0.5
) -> Sample:
    return Sample(target, conns, _wrk(rate, p50, p50 * 4), cpu, rss, busy)


def test_each_figure_is_the_median_over_rounds_and_rss_the_largest() -> None:
    samples = [
        _sample("sidecar", 16, 1000, 1.0, 300, 70_000, 0.2),
        _sample("direct", 16, 50_000, 0.1, 12),
        _sample("sidecar", 16, 3000, 3.0, 100, 72_000, 0.9),
        _sample("sidecar", 16, 2500, 9.0, 200, 71_000, 0.3),
    ]
    cells = summarize(samples)
    assert [c.target for c in cells] == ["sidecar", "direct"]
    sidecar = cells[0]
    assert (sidecar.rounds, sidecar.requests, sidecar.rate, sidecar.p50_ms, sidecar.cpu_us) == (3, 3000, 2500, 3.0, 200)
    assert (sidecar.peak_rss_kib, sidecar.wrk_busy) == (72_000, 0.3)
    assert cell_rows(cells)[0] == ("sidecar", "16", "2500", "3.000", "12.000", "200.0", "70.3", "30")


def test_wrk_busy_is_cpu_seconds_per_wall_second() -> None:
    assert busy_share(4.5, 5.0) == pytest.approx(0.9)
    assert math.isnan(busy_share(1.0, 0.0))


def _cells() -> list[Cell]:
    return summarize(
        [
            _sample("direct", 1, 30_000, 0.030, 15),
            _sample("direct", 16, 50_000, 0.150, 12),
            _sample("nginx-proxy", 1, 14_000, 0.080, 30),
            _sample("nginx-proxy", 16, 20_000, 0.600, 21),
            _sample("sidecar", 1, 9_000, 0.120, 50),
            _sample("sidecar", 16, 12_000, 1.000, 40),
            _sample("sidecar-slow", 1, 2_000, 0.500, 420),
            _sample("sidecar-slow", 16, 2_400, 5.000, 320),
        ]
    )


def test_ratios_against_nginx_proxy_at_16_and_direct_at_1() -> None:
    rows = {r.target: r for r in ratios(_cells(), {"sidecar": 40 * 1024, "sidecar-slow": 70 * 1024})}
    assert list(rows) == ["nginx-proxy", "sidecar", "sidecar-slow"]
    fast, slow = rows["sidecar"], rows["sidecar-slow"]
    assert (fast.rate_vs_nginx_proxy, fast.added_p50_ms, fast.cpu_us, fast.idle_rss_mib) == (
        pytest.approx(0.6),
        pytest.approx(0.09),
        40,
        40.0,
    )
    assert verdicts(fast) == {"cpu": True, "rate": True, "p50": True, "idle_rss": True}
    assert verdicts(slow) == {"cpu": False, "rate": False, "p50": False, "idle_rss": False}
    assert rows["nginx-proxy"].idle_rss_mib is None


def test_verdicts_sit_on_the_boundaries_of_the_issue_targets() -> None:
    cells = summarize(
        [
            _sample("direct", 1, 1, 0.25, 1),
            _sample("nginx-proxy", 16, 1000, 1.0, 1),
            _sample("sidecar", 1, 1, 0.35, 1),
            _sample("sidecar", 16, 500, 1.0, 45.0),
        ]
    )
    (_, sidecar) = ratios(cells, {"sidecar": 50 * 1024})
    assert verdicts(sidecar) == {"cpu": True, "rate": True, "p50": True, "idle_rss": True}


def test_a_missing_baseline_leaves_the_ratio_unjudged() -> None:
    cells = summarize([_sample("sidecar", 16, 500, 1.0, 40)])
    (row,) = ratios(cells, {})
    assert (row.rate_vs_nginx_proxy, row.added_p50_ms, row.idle_rss_mib) == (None, None, None)
    assert verdicts(row) == {"cpu": True, "rate": None, "p50": None, "idle_rss": None}


def test_only_judged_targets_carry_pass_or_fail() -> None:
    rows = ratio_rows(ratios(_cells(), {"sidecar": 40 * 1024}), judged=["sidecar", "sidecar-slow"])
    assert rows[0] == ("nginx-proxy", "1.00", "+0.050", "21.0", "n/a")
    assert rows[1] == ("sidecar", "0.60 pass", "+0.090 pass", "40.0 pass", "40.0 pass")
    assert rows[2] == ("sidecar-slow", "0.12 FAIL", "+0.470 FAIL", "320.0 FAIL", "n/a")


def test_tables_align_in_text_and_are_valid_markdown() -> None:
    rows = [("direct", "1", "30000", "0.030", "0.120", "15.0", "1.0", "97")]
    text = text_table(CELL_HEADER, rows).splitlines()
    assert len({len(line) for line in text}) == 1 and text[1].startswith("direct ")
    markdown = markdown_table(CELL_HEADER, rows).splitlines()
    assert markdown[1] == "|---|---|---|---|---|---|---|---|"
    assert markdown[2] == "| direct | 1 | 30000 | 0.030 | 0.120 | 15.0 | 1.0 | 97 |"
