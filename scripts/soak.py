"""Bounded soak: mixed traffic through a real sidecar process while the emulated workspace misbehaves.

    .venv/bin/python scripts/soak.py [--duration 300] [--seed 1] [--json result.json]

Set-up: the emulated workspace runs in this process (real TLS from its own CA, fault knobs driven
directly); the sidecar runs as `python -m proxy run`, a separate process, so its peak RSS (VmHWM) is its
own and it has its own event loop and core, as in production. Client workers (aiohttp; grpc.aio when
this checkout has the gRPC front) call it over loopback and check every answer's content.

Faults over the run (times scale with --duration):
- 60 s workspace and data-plane tokens from the start: a 60 s token is refreshed 5 s after it is obtained
  (lead 55 s) and is unusable in its last 40 s, so the sidecar mints one every ~5 s per credential;
- the data plane closes keep-alive connections idle for more than 2 s, and traffic pauses for 3.5 s
  every 40 s, so pooled connections are closed under the sidecar;
- every 15 s, the next 2 invocations (of one endpoint or of any) answer 429, alternately with
  `Retry-After: 1` and without; 2 = retry attempts - 1, so every such request can still succeed;
- one token-server outage (every grant answers 503) of 12 s, shorter than the 15 s for which a
  60 s token that is due for refresh stays usable (60 - 40 - 5);
- one recreation of `fraud-ro` (new id, new host; the old host answers 404), 0.3 s after two of its
  calls got a 429 with `Retry-After: 1`, so that they retry after it.

Report: calls per kind, failures (each printed with details), p50/p99 latency, the sidecar's retries by
reason, the emulator's counters, inference runs vs. successful calls, the sidecar's RSS.
Exit status: 0 when every client call succeeded and every check held, 1 otherwise, 2 for bad usage.
The run is bounded: --duration at most 540 s, a hard limit of 600 s wall time for the whole script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    SidecarProcess,
    grpc_front_available,
    mib,
    peak_rss_kib,
    percentile,
    rss_kib,
    scrape,
    select,
)

from proxy.emulator import Emulator, EmulatorSettings

DEFAULT_DURATION = 300.0
MAX_DURATION = 540.0
WALL_LIMIT = 600.0  # the whole script, start-up and drain included
TOKEN_TTL = 60.0
IDLE_CLOSE = 2.0
PAUSE = 3.5  # > IDLE_CLOSE plus the longest stream still finishing when a pause starts
PAUSE_EVERY = 40.0
BURST_EVERY = 15.0
BURST_SIZE = 2  # fewer than the sidecar's default retry_attempts (5): absorbed, never an error
OUTAGE = 12.0  # < 60 - 40 - 5: how long a 60 s token that is due for refresh stays usable
CALL_TIMEOUT = 30.0
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
MAX_FAILURES_SHOWN = 40


# --- bookkeeping ----------------------------------------------------------------------------------


@dataclass
class Failure:
    kind: str
    at: float
    phase: str
    detail: str


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    ok: Counter[str] = field(default_factory=Counter)
    ok_by_endpoint: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[Failure] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # active phase -> since (monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def phase(self) -> str:
        return ",".join(sorted(self.phases)) or "steady"

    def begin(self, name: str) -> None:
        self.phases[name] = time.monotonic()
        self.events.append((self.now(), f"{name} begins"))

    def end(self, name: str) -> None:
        self.phases.pop(name, None)
        self.events.append((self.now(), f"{name} ends"))

    def note(self, text: str) -> None:
        self.events.append((self.now(), text))


class Wrong(Exception):
    """An answer arrived but is not the right one."""


# --- payloads and checks ---------------------------------------------------------------------------


def records(rng: random.Random) -> list[dict[str, Any]]:
    return [
        {"amount": rng.randint(0, 10_000) / 4, "items": rng.randint(0, 50), "tag": rng.choice(WORDS)}
        for _ in range(rng.randint(1, 4))
    ]


def check_predictions(body: bytes, rows: list[dict[str, Any]]) -> None:
    answer = json.loads(body)
    expected = [row["amount"] + row["items"] for row in rows]
    if answer.get("predictions") != expected:
        raise Wrong(f"predictions {answer.get('predictions')!r}, expected {expected!r}")


def check_features(body: bytes, rows: list[dict[str, Any]]) -> None:
    answer = json.loads(body)
    expected = [{**row, "score": row["amount"] + row["items"]} for row in rows]
    if answer.get("outputs") != expected:
        raise Wrong(f"outputs {answer.get('outputs')!r}, expected {expected!r}")


def check_chunks(chunks: list[bytes], content: str) -> None:
    """Chat chunks (JSON) concatenate to the echo; the last one says stop."""
    if not chunks:
        raise Wrong("no chunks")
    text = ""
    finish = None
    for raw in chunks:
        chunk = json.loads(raw)
        choice = chunk["choices"][0]
        text += choice["delta"].get("content") or ""
        finish = choice.get("finish_reason")
    if text != "echo: " + content:
        raise Wrong(f"stream text {text!r}, expected {'echo: ' + content!r}")
    if finish != "stop":
        raise Wrong(f"last chunk finish_reason {finish!r}")


def sse_data(body: bytes) -> list[bytes]:
    """The data of each event of an SSE body (single-line events, as the emulator sends)."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if lines:
            events.append(b"\n".join(lines))
    return events


# --- client workers --------------------------------------------------------------------------------


Call = Callable[[random.Random], Awaitable[str]]  # returns the endpoint it called


def http_unary(session: aiohttp.ClientSession, base: str, endpoint: str) -> Call:
    async def call(rng: random.Random) -> str:
        rows = records(rng)
        key = "dataframe_records"
        url = f"{base}/serving-endpoints/{endpoint}/invocations"
        async with session.post(url, json={key: rows}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise Wrong(f"HTTP {resp.status}: {body[:300]!r}")
            if resp.headers.get("served-model-name") != f"{endpoint}-1":
                raise Wrong(f"served-model-name {resp.headers.get('served-model-name')!r}")
        (check_features if endpoint == "features-ro" else check_predictions)(body, rows)
        return endpoint

    return call


def http_stream(session: aiohttp.ClientSession, base: str, endpoint: str) -> Call:
    async def call(rng: random.Random) -> str:
        content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        body = {"messages": [{"role": "user", "content": content}], "stream": True}
        async with session.post(f"{base}/serving-endpoints/{endpoint}/invocations", json=body) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise Wrong(f"HTTP {resp.status}: {raw[:300]!r}")
            if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise Wrong(f"Content-Type {resp.headers.get('Content-Type')!r}")
        events = sse_data(raw)
        if not events or events[-1] != b"[DONE]":
            raise Wrong(f"stream does not end with data: [DONE]: {raw[-200:]!r}")
        check_chunks(events[:-1], content)
        return endpoint

    return call


def grpc_calls(port: int) -> tuple[Any, Callable[[str], Call], Callable[[str], Call]]:
    """A channel and factories for gRPC unary and streaming calls (imported only when the front exists)."""
    import grpc

    from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
    from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ServingProxyStub(channel)

    def unary(endpoint: str) -> Call:
        async def call(rng: random.Random) -> str:
            rows = records(rng)
            request = pb.InvokeRequest(endpoint=endpoint, json_body=json.dumps({"dataframe_records": rows}).encode())
            try:
                reply = await stub.Invoke(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                raise Wrong(f"gRPC {err.code().name}: {err.details()} {err.trailing_metadata()}") from None
            if reply.served_model_name != f"{endpoint}-1":
                raise Wrong(f"served_model_name {reply.served_model_name!r}")
            check_predictions(reply.json_body, rows)
            return endpoint

        return call

    def stream(endpoint: str) -> Call:
        async def call(rng: random.Random) -> str:
            content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            body = json.dumps({"messages": [{"role": "user", "content": content}], "stream": True}).encode()
            chunks: list[bytes] = []
            try:
                async for event in stub.InvokeStream(
                    pb.InvokeRequest(endpoint=endpoint, json_body=body), timeout=CALL_TIMEOUT
                ):
                    chunks.append(event.data)
            except grpc.aio.AioRpcError as err:
                raise Wrong(f"gRPC {err.code().name} after {len(chunks)} events: {err.details()}") from None
            if chunks and chunks[-1] == b"[DONE]":
                raise Wrong("the [DONE] terminator was relayed as an event")
            check_chunks(chunks, content)
            return endpoint

        return call

    return channel, unary, stream


async def worker(
    kind: str, call: Call, stats: Stats, traffic: asyncio.Event, stop_at: float, rng: random.Random, think: float
) -> None:
    for _ in range(10_000_000):  # bounded; the deadline ends it long before
        await traffic.wait()
        if time.monotonic() >= stop_at:
            return
        phase = stats.phase()
        started = time.monotonic()
        try:
            async with asyncio.timeout(CALL_TIMEOUT + 5):
                endpoint = await call(rng)
        except Exception as err:
            detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if stats.phase() != phase:
                phase = f"{phase} -> {stats.phase()}"
            stats.failures.append(Failure(kind, stats.now(), phase, detail))
        else:
            stats.ok[kind] += 1
            stats.ok_by_endpoint[endpoint] += 1
            stats.latencies[kind].append(time.monotonic() - started)
        if think:
            await asyncio.sleep(rng.uniform(0, think))


# --- faults --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    duration: float
    outage_at: float
    outage: float
    recreate_at: float
    pauses: tuple[float, ...]
    bursts: tuple[float, ...]


def plan(duration: float, outage: float) -> Plan:
    outage_at = round(duration * 0.4)
    recreate_at = round(duration * 0.65)

    def clear_of_specials(t: float) -> bool:
        return all(abs(t - s) > PAUSE + 2 for s in (outage_at, outage_at + outage, recreate_at))

    pauses = tuple(
        t for t in (20 + PAUSE_EVERY * i for i in range(int(duration / PAUSE_EVERY) + 1)) if t < duration - 10
    )
    bursts = tuple(t for t in (8 + BURST_EVERY * i for i in range(int(duration / BURST_EVERY) + 1)) if t < duration - 5)
    return Plan(
        duration,
        outage_at,
        outage,
        recreate_at,
        tuple(t for t in pauses if clear_of_specials(t)),
        bursts,
    )


async def run_faults(emu: Emulator, stats: Stats, traffic: asyncio.Event, p: Plan) -> None:
    burst_targets: tuple[tuple[str | None, int | None], ...] = (
        ("fraud-ro", 1),
        ("chat-ro", None),
        (None, 1),
        ("fraud-ro", None),
        ("features-ro", 1),
        (None, None),
    )
    actions: list[tuple[float, str, Callable[[], Awaitable[None]]]] = []

    async def pause() -> None:
        stats.begin("pause")
        traffic.clear()
        await asyncio.sleep(PAUSE)
        traffic.set()
        stats.end("pause")

    async def outage_begin() -> None:
        emu.faults.token_outage = True
        stats.begin("token_outage")

    async def outage_end() -> None:
        emu.faults.token_outage = False
        stats.end("token_outage")

    async def recreate() -> None:
        # Calls that are waiting out a Retry-After when the endpoint is recreated must retry on the new one.
        emu.fail_next(BURST_SIZE, 429, retry_after=1, endpoint="fraud-ro")
        stats.note(f"429 x{BURST_SIZE} for fraud-ro, Retry-After 1, just before its recreation")
        await asyncio.sleep(0.3)
        new_id = emu.recreate_endpoint("fraud-ro")
        stats.note(f"fraud-ro recreated as {new_id[:8]}... at {emu.endpoint_url('fraud-ro')}")
        stats.begin("recreated")
        await asyncio.sleep(5)
        stats.end("recreated")

    def burst(index: int) -> Callable[[], Awaitable[None]]:
        endpoint, retry_after = burst_targets[index % len(burst_targets)]

        async def go() -> None:
            emu.fail_next(BURST_SIZE, 429, retry_after=retry_after, endpoint=endpoint)
            stats.note(f"429 x{BURST_SIZE} for {endpoint or 'any endpoint'}, Retry-After {retry_after}")

        return go

    actions += [(t, "pause", pause) for t in p.pauses]
    actions += [(t, "429", burst(i)) for i, t in enumerate(p.bursts)]
    actions += [(p.outage_at, "outage", outage_begin), (p.outage_at + p.outage, "outage end", outage_end)]
    actions += [(p.recreate_at, "recreate", recreate)]
    actions.sort(key=lambda action: action[0])
    running: set[asyncio.Task[None]] = set()
    for at, _, action in actions:
        delay = stats.started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(action())
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)


async def watch_rss(pid: int, samples: list[tuple[float, int]], stats: Stats, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        value = rss_kib(pid)
        if value is not None:
            samples.append((stats.now(), value))
        await asyncio.sleep(2.0)


# --- the run -------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    settings = EmulatorSettings(cp_token_ttl=TOKEN_TTL, dp_token_ttl=TOKEN_TTL)
    settings.faults.idle_close_after = IDLE_CLOSE
    settings.faults.connection_faults_on_control_plane = args.idle_close_control_plane
    work = Path(tempfile.mkdtemp(prefix="serving-sidecar-soak-"))
    with_grpc = grpc_front_available() and not args.no_grpc
    async with Emulator(settings) as emu:
        ca_file = emu.write_ca(work / "ca.pem")
        sidecar = SidecarProcess(
            host=emu.workspace_url,
            client_id=emu.client_id,
            client_secret=emu.client_secret,
            ca_file=ca_file,
            endpoints=["fraud-ro", "features-ro", "chat-ro"],
            log_dir=work,
        )
        await sidecar.start()
        try:
            return await drive(emu, sidecar, args, rng, with_grpc)
        finally:
            if sidecar.process is not None:
                await sidecar.stop()


async def drive(
    emu: Emulator, sidecar: SidecarProcess, args: argparse.Namespace, rng: random.Random, with_grpc: bool
) -> int:
    stats = Stats()
    p = plan(args.duration, args.outage)
    print(
        f"soak: {args.duration:.0f} s, sidecar pid {sidecar.pid} (log {sidecar.log_path}), "
        f"gRPC front: {'yes' if with_grpc else 'not in this checkout, HTTP only'}",
        flush=True,
    )
    print(
        f"plan: tokens {TOKEN_TTL:.0f} s; idle close {IDLE_CLOSE} s; pauses of {PAUSE} s at "
        f"{', '.join(f'{t:.0f}' for t in p.pauses)} s; 429 x{BURST_SIZE} every {BURST_EVERY:.0f} s; "
        f"token outage {p.outage_at:.0f}-{p.outage_at + p.outage:.0f} s; fraud-ro recreated at {p.recreate_at:.0f} s",
        flush=True,
    )
    traffic = asyncio.Event()
    traffic.set()
    stop_at = stats.started + args.duration
    rss_samples: list[tuple[float, int]] = []
    connector = aiohttp.TCPConnector(limit=0)
    channel = None
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
        base = sidecar.http_url
        kinds: list[tuple[str, Call]] = [
            *((f"http fraud-ro #{i}", http_unary(session, base, "fraud-ro")) for i in range(3)),
            ("http features-ro", http_unary(session, base, "features-ro")),
            ("http plain-model", http_unary(session, base, "plain-model")),
            *((f"http-sse chat-ro #{i}", http_stream(session, base, "chat-ro")) for i in range(2)),
        ]
        if with_grpc:
            channel, grpc_unary, grpc_stream = grpc_calls(sidecar.grpc_port)
            kinds += [(f"grpc fraud-ro #{i}", grpc_unary("fraud-ro")) for i in range(2)]
            kinds += [("grpc-stream chat-ro", grpc_stream("chat-ro"))]
        workers = [
            asyncio.create_task(worker(kind, call, stats, traffic, stop_at, random.Random(rng.random()), args.think))
            for kind, call in kinds
        ]
        helpers = [
            asyncio.create_task(watch_rss(sidecar.pid, rss_samples, stats, stop_at)),
            asyncio.create_task(run_faults(emu, stats, traffic, p)),
            asyncio.create_task(report_progress(stats, stop_at)),
        ]
        try:
            await asyncio.wait(workers, timeout=args.duration + CALL_TIMEOUT + 15)
        finally:
            for task in (*workers, *helpers):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if channel is not None:
                await channel.close()
        metrics = await scrape(session, sidecar.admin_url)
    peak = peak_rss_kib(sidecar.pid)
    final_rss = rss_kib(sidecar.pid)
    counters = emu.counters.snapshot()
    code = await sidecar.stop()
    log_problems = [
        line
        for line in sidecar.log_path.read_text(errors="replace").splitlines()
        if "Traceback" in line or " ERROR " in line or "never retrieved" in line
    ]
    return report(stats, metrics, counters, peak, final_rss, rss_samples, code, log_problems, args, with_grpc)


async def report_progress(stats: Stats, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        await asyncio.sleep(30)
        print(
            f"  {stats.now():5.0f} s: {sum(stats.ok.values())} ok, {len(stats.failures)} failed, phase {stats.phase()}",
            flush=True,
        )


def group(kind: str) -> str:
    return kind.split(" #")[0]


def report(
    stats: Stats,
    metrics: dict[Any, float],
    counters: dict[str, Any],
    peak: int | None,
    final_rss: int | None,
    rss_samples: list[tuple[float, int]],
    exit_code: int | None,
    log_problems: list[str],
    args: argparse.Namespace,
    with_grpc: bool,
) -> int:
    ok: Counter[str] = Counter()
    latencies: dict[str, list[float]] = defaultdict(list)
    failed: Counter[str] = Counter()
    for kind, count in stats.ok.items():
        ok[group(kind)] += count
        latencies[group(kind)] += stats.latencies[kind]
    for failure in stats.failures:
        failed[group(failure.kind)] += 1
    lines = ["", "=== soak summary ==="]
    total_ok, total_failed = sum(ok.values()), sum(failed.values())
    lines.append(
        f"duration {args.duration:.0f} s, seed {args.seed}, fronts: HTTP{' + gRPC' if with_grpc else ''}; "
        f"calls {total_ok + total_failed}, failed {total_failed}"
    )
    lines.append(f"{'kind':<22}{'calls':>8}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for kind in sorted(set(ok) | set(failed)):
        values = latencies[kind]
        lines.append(
            f"{kind:<22}{ok[kind] + failed[kind]:>8}{failed[kind]:>8}"
            f"{percentile(values, 0.5) * 1000:>9.1f}{percentile(values, 0.99) * 1000:>9.1f}"
            f"{(max(values) if values else 0) * 1000:>9.1f}"
        )
    retries = select(metrics, "serving_sidecar_retries_total")
    by_reason: Counter[str] = Counter()
    for labels, value in retries.items():
        by_reason[dict(labels)["reason"]] += int(value)
    lines.append(
        "sidecar retries by reason: " + (", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) or "none")
    )
    fetches = select(metrics, "serving_sidecar_token_fetches_total")
    lines.append(
        "sidecar token fetches: "
        + ", ".join(f"{dict(k)['kind']}/{dict(k)['result']} {int(v)}" for k, v in sorted(fetches.items()))
    )
    codes = select(metrics, "serving_sidecar_requests_total")
    lines.append(
        "sidecar answers: "
        + ", ".join(
            f"{dict(k)['front']}/{dict(k)['endpoint']}/{dict(k)['code']} {int(v)}" for k, v in sorted(codes.items())
        )
    )
    lines.append(
        f"emulator: token grants {counters['token_grants']}, token failures {counters['token_failures']}, "
        f"metadata reads {counters['metadata_reads']}"
    )
    lines.append(f"emulator invocations by status: {counters['invocations']}")
    lines.append(
        f"emulator connections: data plane {counters['data_plane_connections']}, control plane "
        f"{counters['control_plane_connections']}, idle-closed {counters['idle_closed_connections']}, "
        f"dropped {counters['dropped_connections']}, cancelled invocations {counters['invocations_cancelled']}"
    )
    problems: list[str] = []
    runs = {name: statuses.get("200", 0) for name, statuses in counters["invocations"].items()}
    for endpoint in sorted(set(runs) | set(stats.ok_by_endpoint)):
        if runs.get(endpoint, 0) != stats.ok_by_endpoint[endpoint]:
            problems.append(
                f"{endpoint}: the model ran {runs.get(endpoint, 0)} times for {stats.ok_by_endpoint[endpoint]} "
                "successful calls (lost or duplicate inference)"
            )
    lines.append("inference runs = successful calls: " + ("yes, for every endpoint" if not problems else "NO"))
    first = next((value for at, value in rss_samples if at >= 10), rss_samples[0][1] if rss_samples else None)
    lines.append(
        f"sidecar RSS: after warm-up {mib(first)}, at the end {mib(final_rss)}, peak (VmHWM) {mib(peak)}; "
        f"exit code after SIGTERM {exit_code}"
    )
    if exit_code != 0:
        problems.append(f"sidecar exit code {exit_code} after SIGTERM")
    if log_problems:
        problems.append(f"{len(log_problems)} error lines in the sidecar log, first: {log_problems[0][:300]}")
    lines.append("timeline: " + "; ".join(f"{at:.0f} s {text}" for at, text in stats.events if "429" not in text))
    for failure in stats.failures[:MAX_FAILURES_SHOWN]:
        lines.append(f"FAILED {failure.kind} at {failure.at:.2f} s during {failure.phase}: {failure.detail[:500]}")
    if len(stats.failures) > MAX_FAILURES_SHOWN:
        lines.append(f"... and {len(stats.failures) - MAX_FAILURES_SHOWN} more failures")
    for problem in problems:
        lines.append(f"PROBLEM {problem}")
    verdict = "PASS" if not stats.failures and not problems else "FAIL"
    lines.append(f"result: {verdict}: {total_failed} failed client calls out of {total_ok + total_failed}")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "verdict": verdict,
                    "calls": {k: ok[k] + failed[k] for k in set(ok) | set(failed)},
                    "failed": dict(failed),
                    "p50_ms": {k: percentile(v, 0.5) * 1000 for k, v in latencies.items()},
                    "p99_ms": {k: percentile(v, 0.99) * 1000 for k, v in latencies.items()},
                    "retries": dict(by_reason),
                    "emulator": counters,
                    "peak_rss_kib": peak,
                    "failures": [f.__dict__ for f in stats.failures],
                    "problems": problems,
                },
                indent=2,
            )
        )
    return 0 if verdict == "PASS" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds of traffic (<= 540)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the payloads and think times")
    parser.add_argument("--think", type=float, default=0.03, help="most seconds a worker waits between calls")
    parser.add_argument("--outage", type=float, default=OUTAGE, help="seconds of token-server outage")
    parser.add_argument("--no-grpc", action="store_true", help="HTTP traffic only")
    parser.add_argument(
        "--idle-close-control-plane",
        action="store_true",
        help="also close idle connections to the workspace host (token and metadata calls)",
    )
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if not 30 <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be within 30..{MAX_DURATION:.0f} seconds")
    if not 0 < args.outage < args.duration / 2:
        parser.error("--outage must be positive and shorter than half the duration")

    async def bounded() -> int:
        async with asyncio.timeout(WALL_LIMIT):
            return await soak(args)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        print(f"soak: FAIL: did not finish within {WALL_LIMIT:.0f} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
