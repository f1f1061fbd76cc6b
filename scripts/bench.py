"""What the sidecar costs per forwarded request, against nginx and a minimal aiohttp proxy (`make bench`).

    .venv/bin/python scripts/bench.py [--duration 3] [--rounds 5] [--warmup 2] [--markdown FILE]
                                      [--sidecar-variant NAME='ARGS' ...] [--sidecar-python NAME=PYTHON ...]
                                      [--skip TARGET ...]

Everything on one machine, on loopback. wrk is the load generator; the model is an nginx over HTTPS
(TLS from a trustme CA) that answers the invocation path with a small static JSON body, so the upstream
is never the bottleneck. Targets:
- direct: wrk straight to the HTTPS upstream, the physical limit;
- nginx-proxy: nginx as a reverse proxy (one worker, plain HTTP in, keep-alive HTTPS upstream
  connections, a static `Authorization: Bearer`);
- aiohttp-proxy: scripts/bench_proxy.py, the floor a user could write (one ClientSession);
- sidecar: `python -m proxy run` (one process) with `--endpoint bench` warmed; tokens and metadata
  come from the emulator (its own process), whose `metadata_overrides` knob points the `bench`
  endpoint's data-plane URL at the nginx upstream. Extra variants (`--sidecar-variant NAME='ARGS'`)
  run side by side; `sidecar-asyncio` and `sidecar-workers2` (`--workers 2`) are added by default when
  the sidecar accepts `--event-loop` and `--workers`.

Each target is measured with wrk at 1 connection (-t1) and at 16 connections (--wrk-threads, default
1: one wrk thread drives about twice nginx-proxy's rate on this kind of machine, so it is not the
limit, and on 2 cores a second thread only takes CPU from the proxy and the upstream). Runs are
interleaved in rounds (each target once per round) so drift hits all alike; each figure is the median
over rounds. CPU per request is utime+stime (+ reaped children) from /proc/<pid>/stat of the proxy's
process tree over the wrk run, divided by the requests wrk completed; for `direct` it is the upstream
nginx's own. Peak RSS is VmHWM summed over the tree. wrk's own CPU share is shown too, so a
run where the load generator was the limit can be told apart. Every answer must be a 200: one call per target
per round is checked for status and body, warm-up runs count every status != 200 in a wrk Lua hook,
and measured runs fail on wrk's "Non-2xx or 3xx" and socket-error counts (a per-response Lua hook
would cost wrk 15-25% of its rate on the fastest targets). Not part of `make test`: figures are
reported, never asserted (`--check` exits 3 when a sidecar misses one of the issue's targets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import grp
import os
import platform
import pwd
import resource
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import trustme
from bench_figures import (
    CELL_HEADER,
    DIRECT,
    NGINX_PROXY,
    RATIO_HEADER,
    Sample,
    WrkOutputError,
    busy_share,
    cell_rows,
    cpu_us_per_request,
    descendants,
    markdown_table,
    parse_stat,
    parse_wrk,
    ratio_rows,
    ratios,
    summarize,
    targets_line,
    text_table,
    verdicts,
    wrk_failures,
)
from harness import EmulatorProcess, SidecarProcess, free_port, machine

ENDPOINT = "bench"
PATH = f"/serving-endpoints/{ENDPOINT}/invocations"
BODY = '{"dataframe_records":[{"amount":12.5,"items":3}]}'
ANSWER = '{"predictions":[1]}'
AIOHTTP_PROXY = "aiohttp-proxy"
SIDECAR = "sidecar"
SCRIPTS = Path(__file__).resolve().parent
CONNECTIONS = (1, 16)

LUA_POST = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
# Warm-up only: a Lua call per response costs wrk a good share of its rate.
LUA_CHECKED = (
    LUA_POST
    + """bad = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body) if status ~= 200 then bad = bad + 1 end end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("bench: %d responses with status != 200\\n", total))
end
"""
)


class BenchError(RuntimeError):
    """A target answered wrongly or a process did not start: the figures would mean nothing."""


# --- processes -------------------------------------------------------------------------------------


def nginx_user_line() -> str:
    """As root, nginx drops its workers to an unprivileged user; Debian has no group "nobody"."""
    if os.geteuid() != 0:
        return ""
    nobody = pwd.getpwnam("nobody")
    return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"


def nginx_conf(work: Path, name: str, workers: str, server: str, upstream: str = "") -> str:
    temp = "\n".join(f"  {kind}_temp_path {work / name}-{kind};" for kind in ("client_body", "proxy", "fastcgi"))
    temp += "\n" + "\n".join(f"  {kind}_temp_path {work / name}-{kind};" for kind in ("uwsgi", "scgi"))
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {work / name}.pid;
error_log {work / name}.error.log warn;
{nginx_user_line()}
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
{upstream}
  server {{
{server}
  }}
}}
"""


def upstream_conf(work: Path, port: int) -> str:
    server = f"""    listen 127.0.0.1:{port} ssl;
    ssl_certificate {work / "upstream.pem"};
    ssl_certificate_key {work / "upstream.key"};
    location = {PATH} {{ default_type application/json; return 200 '{ANSWER}'; }}
    location / {{ return 404; }}"""
    return nginx_conf(work, "upstream", "auto", server)


def proxy_conf(work: Path, port: int, upstream_port: int) -> str:
    upstream = f"""  upstream model {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}"""
    # nginx checks a certificate's DNS names only, so it verifies the upstream as "localhost".
    server = f"""    listen 127.0.0.1:{port};
    location / {{
      proxy_pass https://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-static-token";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {work / "nginx-ca.pem"};
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }}"""
    return nginx_conf(work, "nginx-proxy", "1", server, upstream)


def write_tls(work: Path) -> None:
    """A trustme CA and a certificate for 127.0.0.1 (IP SAN) and localhost, as PEM files in `work`."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(work / "nginx-ca.pem"))
    cert.private_key_pem.write_to_path(str(work / "upstream.key"))
    (work / "upstream.pem").write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))


@dataclass
class Target:
    name: str
    url: str
    pid: int
    idle_rss_kib: int | None = None


@dataclass
class Processes:
    """Everything the bench started; stop() ends them all, newest first."""

    work: Path
    popen: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sidecars: list[SidecarProcess] = field(default_factory=list)
    emulator: EmulatorProcess | None = None

    def spawn(self, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        with (self.work / log).open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own tools and arguments
                list(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.popen.append(process)
        return process

    async def stop(self) -> None:
        for sidecar in reversed(self.sidecars):
            await sidecar.stop()
        if self.emulator is not None:
            self.emulator.stop()
        for process in reversed(self.popen):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


async def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}; see {log}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within 20 s; see {log}")


async def start_nginx(procs: Processes, name: str, conf: str, port: int) -> Target:
    path = procs.work / f"{name}.conf"
    path.write_text(conf)
    error_log = procs.work / f"{name}.error.log"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    process = procs.spawn([nginx, "-e", str(error_log), "-p", str(procs.work), "-c", str(path)], f"{name}.out")
    await wait_listening(port, process, name, error_log)
    return Target(name, "", process.pid)


async def start_aiohttp_proxy(procs: Processes, upstream_port: int) -> Target:
    port = free_port()
    argv = [sys.executable, str(SCRIPTS / "bench_proxy.py"), "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", f"https://127.0.0.1:{upstream_port}", "--ca-file", str(procs.work / "nginx-ca.pem")]
    process = procs.spawn(argv, "aiohttp-proxy.log")
    await wait_listening(port, process, AIOHTTP_PROXY, procs.work / "aiohttp-proxy.log")
    return Target(AIOHTTP_PROXY, f"http://127.0.0.1:{port}{PATH}", process.pid)


class Sidecar(SidecarProcess):
    """The harness's sidecar process with extra command-line arguments (a variant)."""

    def __init__(self, extra: Sequence[str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.extra = list(extra)

    def _argv(self) -> list[str]:
        return super()._argv() + self.extra


async def start_emulator(procs: Processes, upstream_url: str) -> EmulatorProcess:
    """The control plane, its `bench` endpoint's data-plane URL pointed at the nginx upstream."""
    config = procs.work / "emulator.yaml"
    config.write_text(f"endpoints:\n  - {{name: {ENDPOINT}, kind: custom}}\ncp_token_ttl: 3600\ndp_token_ttl: 3600\n")
    emulator = EmulatorProcess(extra=["--config", str(config)], log_dir=procs.work)
    emulator.start()
    procs.emulator = emulator
    patch = {"metadata_overrides": {ENDPOINT: {"endpoint_url": upstream_url}}}
    patch["metadata_overrides"][ENDPOINT]["data_plane_info"] = {"query_info": {"endpoint_url": upstream_url}}
    context = ssl.create_default_context(cafile=str(emulator.ca_file))
    url = emulator.info["workspace_url"] + "/_emulator/faults"
    async with aiohttp.ClientSession() as session, session.post(url, json=patch, ssl=context) as resp:
        if resp.status != 200:
            raise BenchError(f"emulator refused the metadata override: {resp.status} {await resp.text()}")
    return emulator


async def start_sidecar(
    procs: Processes, emulator: EmulatorProcess, name: str, extra: Sequence[str], python: str
) -> Target:
    bundle = procs.work / "ca-bundle.pem"
    if not bundle.exists():
        bundle.write_bytes(emulator.ca_file.read_bytes() + (procs.work / "nginx-ca.pem").read_bytes())
    sidecar = Sidecar(
        extra,
        python=python,
        host=emulator.info["workspace_url"],
        client_id=emulator.info["client_id"],
        client_secret=emulator.info["client_secret"],
        ca_file=bundle,
        endpoints=[ENDPOINT],
        flags={"drain_delay": 0},
        log_dir=procs.work / name,
    )
    sidecar.log_dir.mkdir()
    procs.sidecars.append(sidecar)
    await sidecar.start()
    target = Target(name, f"{sidecar.http_url}{PATH}", sidecar.pid)
    target.idle_rss_kib = tree_status_kib(sidecar.pid, "VmRSS")
    return target


def run_flags() -> str:
    """This checkout's `serving-sidecar run --help`, to see which flags it accepts."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--help"], capture_output=True, text=True, check=False, timeout=60
    ).stdout


# --- /proc -----------------------------------------------------------------------------------------


def all_stats() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, ticks)} of every process readable now."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stats[int(entry.name)] = parse_stat(Path(entry.path, "stat").read_text())
    return stats


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children: around one wrk run, that run's wrk (nothing else exits)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_ticks(root: int) -> dict[int, int]:
    stats = all_stats()
    tree = descendants(root, {pid: ppid for pid, (ppid, _) in stats.items()})
    return {pid: stats[pid][1] for pid in tree if pid in stats}


def tree_status_kib(root: int, field_name: str) -> int | None:
    """A /proc/<pid>/status figure (VmRSS, VmHWM) summed over the process tree, KiB."""
    stats = all_stats()
    total, seen = 0, False
    for pid in descendants(root, {pid: ppid for pid, (ppid, _) in stats.items()}):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
                    seen = True
    return total if seen else None


# --- load ------------------------------------------------------------------------------------------


async def run_wrk(args: argparse.Namespace, url: str, connections: int, seconds: int, script: Path) -> str:
    threads = 1 if connections == 1 else min(args.wrk_threads, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    process = await asyncio.create_subprocess_exec(
        *argv, "-s", str(script), url, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"wrk against {url} did not finish within {seconds + 60} s") from None
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"wrk exited with {process.returncode} against {url}:\n{text}")
    return text


async def measure(args: argparse.Namespace, target: Target, cpu_pid: int, connections: int, work: Path) -> Sample:
    before, wrk_before = tree_ticks(cpu_pid), children_cpu_seconds()
    text = await run_wrk(args, target.url, connections, args.duration, work / "post.lua")
    after, wrk_after = tree_ticks(cpu_pid), children_cpu_seconds()
    try:
        result = parse_wrk(text)
    except WrkOutputError as err:
        raise BenchError(f"{target.name}: {err}") from None
    problems = wrk_failures(result)
    if problems:
        raise BenchError(f"{target.name} at {connections} connections: {'; '.join(problems)}:\n{text}")
    cpu = cpu_us_per_request(before, after, os.sysconf("SC_CLK_TCK"), result.requests)
    wrk_busy = busy_share(wrk_after - wrk_before, result.seconds)
    return Sample(target.name, connections, result, cpu, tree_status_kib(target.pid, "VmHWM"), wrk_busy)


async def warm_up(args: argparse.Namespace, target: Target, work: Path) -> None:
    text = await run_wrk(args, target.url, CONNECTIONS[-1], args.warmup, work / "checked.lua")
    result = parse_wrk(text)
    problems = wrk_failures(result)
    if result.bad_status is None:
        problems.append("the Lua status check did not report")
    if problems:
        raise BenchError(f"{target.name} warm-up: {'; '.join(problems)}:\n{text}")


async def check_answer(session: aiohttp.ClientSession, target: Target, context: ssl.SSLContext) -> None:
    """One call: status 200 and exactly the upstream's body (proves the path reaches the nginx upstream)."""
    headers = {"Content-Type": "application/json"}
    try:
        async with session.post(target.url, data=BODY, headers=headers, ssl=context) as resp:
            status, body = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as err:
        raise BenchError(f"{target.name} did not answer: {type(err).__name__}: {err}") from None
    if status != 200 or body.strip() != ANSWER:
        raise BenchError(f"{target.name} answered {status} {body[:300]!r}, expected 200 {ANSWER}")


# --- the run ---------------------------------------------------------------------------------------


def variants(args: argparse.Namespace, flags: str) -> list[tuple[str, list[str], str]]:
    """(name, extra arguments, interpreter) of each sidecar to measure."""
    here = sys.executable
    chosen = [(SIDECAR, [], here)]
    if "--event-loop" in flags:
        chosen.append((f"{SIDECAR}-asyncio", ["--event-loop", "asyncio"], here))
    if "--workers" in flags:
        chosen.append((f"{SIDECAR}-workers2", ["--workers", "2"], here))
    chosen += [(variant_name(name), shlex.split(extra), here) for name, extra in args.sidecar_variant]
    chosen += [(variant_name(name), [], python) for name, python in args.sidecar_python]
    return [variant for variant in chosen if variant[0] not in args.skip]


def variant_name(name: str) -> str:
    return name if name.startswith(SIDECAR) else f"{SIDECAR}-{name}"


async def start_all(args: argparse.Namespace, procs: Processes) -> tuple[list[Target], int]:
    """Every target, started and answering; returns them and the upstream nginx's pid."""
    work = procs.work
    write_tls(work)
    (work / "post.lua").write_text(LUA_POST)
    (work / "checked.lua").write_text(LUA_CHECKED)
    upstream_port, proxy_port = free_port(), free_port()
    upstream = await start_nginx(procs, "upstream", upstream_conf(work, upstream_port), upstream_port)
    upstream.name, upstream.url = DIRECT, f"https://127.0.0.1:{upstream_port}{PATH}"
    nginx_proxy = await start_nginx(procs, NGINX_PROXY, proxy_conf(work, proxy_port, upstream_port), proxy_port)
    nginx_proxy.url = f"http://127.0.0.1:{proxy_port}{PATH}"
    targets = [upstream, nginx_proxy]
    if AIOHTTP_PROXY not in args.skip:
        targets.append(await start_aiohttp_proxy(procs, upstream_port))
    chosen = variants(args, run_flags())
    if chosen:
        emulator = await start_emulator(procs, upstream.url)
        for name, extra, python in chosen:
            on = "" if python == sys.executable else f" (on {python})"
            print(f"starting {name} {shlex.join(extra)}".rstrip() + on, flush=True)
            targets.append(await start_sidecar(procs, emulator, name, extra, python))
    return targets, upstream.pid


async def bench(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="serving-sidecar-bench-"))
    procs = Processes(work)
    print(f"work directory (configs, logs): {work}", flush=True)
    try:
        targets, upstream_pid = await start_all(args, procs)
        samples = await rounds(args, targets, upstream_pid, work)
    except RuntimeError as err:  # BenchError, or a process of the harness that did not start
        print(f"\nbench FAILED: {err}\nlogs: {work}", file=sys.stderr)
        return 1
    finally:
        await procs.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept above when something failed: its logs tell why
    return report(args, targets, samples)


async def rounds(args: argparse.Namespace, targets: list[Target], upstream_pid: int, work: Path) -> list[Sample]:
    context = ssl.create_default_context(cafile=str(work / "nginx-ca.pem"))
    samples: list[Sample] = []
    async with aiohttp.ClientSession() as session:
        for target in targets:
            await check_answer(session, target, context)
            await warm_up(args, target, work)
        for number in range(1, args.rounds + 1):
            print(f"round {number}/{args.rounds}", flush=True)
            for target in targets:
                await check_answer(session, target, context)
                for connections in CONNECTIONS:
                    cpu_pid = upstream_pid if target.name == DIRECT else target.pid
                    sample = await measure(args, target, cpu_pid, connections, work)
                    print(
                        f"  {target.name:<16} c{connections:<3} {sample.wrk.rate:>8.0f} req/s "
                        f"p50 {sample.wrk.p50_ms:.3f} ms  {sample.cpu_us:.1f} µs/req",
                        flush=True,
                    )
                    samples.append(sample)
    return samples


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=10)  # noqa: S603
    except OSError:
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_lines() -> list[str]:
    git = tool_version(["git", "-C", str(SCRIPTS.parent), "describe", "--always", "--dirty"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {machine()}",
        f"tools: {tool_version(['nginx', '-v']).removeprefix('nginx version: ')}, "
        f"{tool_version(['wrk', '-v']).split(' Copyright')[0]}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]}, "
        f"aiohttp {aiohttp.__version__}",
        f"sidecar checkout: {git}; load average at the end: {load}",
        f"interpreter of the sidecar and the aiohttp proxy: {sys.executable} (Python {platform.python_version()})",
    ]


def report(args: argparse.Namespace, targets: list[Target], samples: list[Sample]) -> int:
    cells = summarize(samples)
    idle = {t.name: t.idle_rss_kib for t in targets if t.name.startswith(SIDECAR)}
    rows = ratios(cells, idle, many=CONNECTIONS[-1])
    sidecars = list(idle)
    when = datetime.date.today().isoformat()
    heading = (
        f"{when}: {args.rounds} rounds of {args.duration} s per target and connection count, medians; "
        f"wrk -t1 at 1 connection, -t{args.wrk_threads} at 16"
    )
    notes = [
        "CPU µs/req: the proxy's process tree (for direct: the upstream nginx's); peak RSS: VmHWM over the tree; "
        "wrk CPU %: the load generator's own (100: one core flat out, the most one wrk thread can give)",
        targets_line(),
    ]
    print()
    print("\n".join(machine_lines()))
    print(heading)
    print()
    print(text_table(CELL_HEADER, cell_rows(cells)))
    print()
    print(text_table(RATIO_HEADER, ratio_rows(rows, sidecars)))
    print("\n".join(notes))
    if args.markdown:
        parts = [
            heading + ".",
            "\n".join(machine_lines()).replace("\n", "; ") + ".",
            markdown_table(CELL_HEADER, cell_rows(cells)),
            markdown_table(RATIO_HEADER, ratio_rows(rows, sidecars)),
            "; ".join(notes) + ".",
        ]
        Path(args.markdown).write_text("\n\n".join(parts) + "\n")
        print(f"Markdown written to {args.markdown}")
    missed = [r.target for r in rows if r.target in sidecars and False in verdicts(r).values()]
    return 3 if args.check and missed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds of each measured wrk run (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; figures are medians (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of checked warm-up per target (default 2)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads at 16 connections (default 1)")
    parser.add_argument(
        "--sidecar-variant",
        action="append",
        default=[],
        type=named("NAME='ARGS'"),
        metavar="NAME=ARGS",
        help="another sidecar measured side by side, e.g. pool16='--pool-size 16' (repeatable)",
    )
    parser.add_argument(
        "--sidecar-python",
        action="append",
        default=[],
        type=named("NAME=PYTHON", check=interpreter),
        metavar="NAME=PYTHON",
        help="the sidecar on another interpreter (one with this project installed), side by side, e.g. "
        "devpython=.venv/bin/python (repeatable)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="TARGET",
        help=f"leave out {AIOHTTP_PROXY}, {SIDECAR} or a variant (repeatable; {DIRECT} and {NGINX_PROXY} stay)",
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown (for the README)")
    parser.add_argument("--check", action="store_true", help="exit 3 when a sidecar misses one of the issue's targets")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.rounds <= 20 or not 1 <= args.warmup <= 60:
        parser.error("--duration must be within 1..120, --rounds within 1..20, --warmup within 1..60")
    if not 1 <= args.wrk_threads <= 16:
        parser.error("--wrk-threads must be within 1..16")
    if DIRECT in args.skip or NGINX_PROXY in args.skip:
        parser.error(f"{DIRECT} and {NGINX_PROXY} are the baselines of every ratio and cannot be skipped")
    return args


def named(shape: str, check: Callable[[str], str | None] = lambda _: None) -> Callable[[str], tuple[str, str]]:
    """An argparse type for NAME=VALUE: the pair, or an error naming `shape` (or what `check` finds wrong)."""

    def parse(spec: str) -> tuple[str, str]:
        name, sep, value = spec.partition("=")
        if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise argparse.ArgumentTypeError(f"{spec!r}: expected {shape} with NAME of letters, digits, - or _")
        problem = check(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{spec!r}: {problem}")
        return name, value

    return parse


def interpreter(path: str) -> str | None:
    return None if shutil.which(path) else f"{path} is not an executable"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found: run scripts/install-bench-tools (or `make bench`)", file=sys.stderr)
            return 2
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
