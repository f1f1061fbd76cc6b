"""`serving-sidecar run --workers 2` as a real process tree against the emulated workspace.

Which worker served a call is read from the access log (`worker=<n>` on every worker's line), never from
a response header; the process tree from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import grpc

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.emulator import Emulator
from tests.e2e.conftest import Launch, SidecarProcess, free_port

CONNECTIONS = 8
CALLS = 400
WITHIN = 20.0  # seconds any awaited condition below gets; every wait is bounded by it


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc, so it needs no helper library)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def eventually(check: object, what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while True:
        result = check() if callable(check) else check
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {WITHIN} s: {what}"
        await asyncio.sleep(0.05)


async def metrics_text(sidecar: SidecarProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(sidecar.url("/metrics", "admin")) as resp:
        assert resp.status == 200
        return await resp.text()


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            found += float(match.group(2))
    return found


async def requests_are(sidecar: SidecarProcess, count: int) -> bool:
    """`serving_sidecar_requests_total` is `count`; more is a failure at once (never an over-count)."""
    found = total(await metrics_text(sidecar), "serving_sidecar_requests_total")
    assert found <= count, f"{found} requests counted, {count} made"
    return found == count


async def readiness(sidecar: SidecarProcess) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(sidecar.url("/readyz", "admin")) as resp:
        return resp.status, json.loads(await resp.text())["reason"]


async def is_ready(sidecar: SidecarProcess) -> bool:
    return (await readiness(sidecar))[0] == 200


async def call_over(sidecar: SidecarProcess, client: int, calls: int) -> list[tuple[int, bytes]]:
    """`calls` sequential calls on one keep-alive connection; the model answers the sum of the record."""
    answers = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for n in range(calls):
            body = {"dataframe_records": [{"client": client, "n": n}]}
            async with session.post(sidecar.url("/serving-endpoints/fraud-ro/invocations"), json=body) as resp:
                answers.append((resp.status, await resp.read()))
    return answers


def expected(client: int, calls: int) -> list[tuple[int, bytes]]:
    return [(200, b'{"predictions":[%d]}' % (client + n)) for n in range(calls)]


def served_by(log: str) -> dict[str, int]:
    """Access-log lines per worker number."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if "serving_sidecar.access" in line and "/invocations" in line:
            match = re.search(r"\bworker=(\d+)", line)
            key = match.group(1) if match else "none"
            counts[key] = counts.get(key, 0) + 1
    return counts


async def test_two_workers_one_authority_one_set_of_metrics_and_a_clean_stop(emu: Emulator, launch: Launch) -> None:
    sidecar = await launch(
        "--workers", "2", "--endpoint", "fraud-ro", "--access-log", "--drain-delay", "0", "--drain-timeout", "10"
    )
    workers = children(sidecar.process.pid)
    assert len(workers) == 2, sidecar.log()

    per_client = CALLS // CONNECTIONS
    answers = await asyncio.gather(*(call_over(sidecar, client, per_client) for client in range(CONNECTIONS)))
    for client, got in enumerate(answers):
        assert got == expected(client, per_client), sidecar.log()

    await eventually(lambda: sum(served_by(sidecar.log()).values()) == CALLS, "every call in the access log")
    by_worker = served_by(sidecar.log())
    assert set(by_worker) == {"1", "2"}, by_worker  # both processes served calls, and only workers did
    assert by_worker["1"] == by_worker["2"] == CALLS // 2  # 8 connections handed out round robin, 4 each

    counters = emu.counters.snapshot()
    assert counters["token_grants"]["client_credentials"] == 1, counters
    assert counters["token_grants"]["jwt_bearer"] == 1, counters
    assert counters["metadata_reads"] == {"fraud-ro": 1}, counters

    await eventually(lambda: requests_are(sidecar, CALLS), "the workers' counts on /metrics")  # sent each second
    text = await metrics_text(sidecar)
    assert total(text, "serving_sidecar_requests_total") == CALLS
    assert total(text, "serving_sidecar_requests_total", endpoint="fraud-ro", front="http", code="200") == CALLS
    assert total(text, "serving_sidecar_request_duration_seconds_count", front="http") == CALLS
    assert total(text, "serving_sidecar_upstream_request_duration_seconds_count", endpoint="fraud-ro") == CALLS
    assert total(text, "serving_sidecar_token_fetches_total", kind="data_plane", result="success") == 1
    assert total(text, "serving_sidecar_in_flight_requests", front="http") == 0
    assert text.count("# TYPE serving_sidecar_requests_total counter") == 1  # one family, not one per process
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed: run `bash .ci/install-system-packages`"
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()

    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(15) == 0, sidecar.log()
    await eventually(lambda: not any(alive(pid) for pid in workers), "no worker process left")


async def test_a_killed_worker_is_replaced_and_calls_keep_succeeding(launch: Launch) -> None:
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro", "--drain-delay", "0")
    before = await asyncio.gather(*(call_over(sidecar, client, 10) for client in range(4)))
    assert before == [expected(client, 10) for client in range(4)]
    await eventually(lambda: requests_are(sidecar, 40), "both workers' counts on /metrics")  # then kept
    victim = min(children(sidecar.process.pid))

    os.kill(victim, signal.SIGKILL)
    # Connections it held, or was handed at the moment it died, are gone with it (as with any crash).
    # Once the parent has seen it die, new connections go to the surviving worker while it is replaced.
    await eventually(lambda: f"(pid {victim}) was killed by SIGKILL; starting another" in sidecar.log(), "logged")
    during = await asyncio.gather(*(call_over(sidecar, client, 10) for client in range(4)))
    assert during == [expected(client, 10) for client in range(4)], sidecar.log()

    await eventually(lambda: len(children(sidecar.process.pid) - {victim}) == 2, "a new worker in its place")
    await eventually(lambda: is_ready(sidecar), "ready again")
    assert await readiness(sidecar) == (200, "ready"), sidecar.log()
    after = await asyncio.gather(*(call_over(sidecar, client, 10) for client in range(4)))
    assert after == [expected(client, 10) for client in range(4)]
    await eventually(lambda: requests_are(sidecar, 120), "120 calls counted: the killed worker's 20 kept")

    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(15) == 0, sidecar.log()


async def test_a_401_in_one_worker_mints_once_and_every_worker_gets_the_new_token(
    emu: Emulator, launch: Launch
) -> None:
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro", "--access-log")
    assert await asyncio.gather(*(call_over(sidecar, client, 2) for client in range(4))) == [
        expected(client, 2) for client in range(4)
    ]
    grants = emu.counters.snapshot()["token_grants"]
    emu.revoke_all_tokens()  # every token the sidecar holds now gets 401

    assert await call_over(sidecar, 0, 1) == expected(0, 1)  # one worker sees the 401; the parent mints anew
    # The parent sent the new token to every worker before that call was answered; the other worker reads
    # it before it can have parsed a request on a connection opened after the answer.
    answers = await asyncio.gather(*(call_over(sidecar, client, 5) for client in range(4)))  # both workers
    assert answers == [expected(client, 5) for client in range(4)], sidecar.log()
    assert emu.counters.snapshot()["invocations"]["fraud-ro"]["401"] == 1  # the other worker never used the old one
    after = emu.counters.snapshot()["token_grants"]
    assert after["client_credentials"] == grants["client_credentials"] + 1
    assert after["jwt_bearer"] == grants["jwt_bearer"] + 1
    assert set(served_by(sidecar.log())) == {"1", "2"}


async def test_401s_in_both_workers_at_once_still_mint_once(emu: Emulator, launch: Launch) -> None:
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro")
    assert await asyncio.gather(*(call_over(sidecar, client, 2) for client in range(4))) == [
        expected(client, 2) for client in range(4)
    ]
    grants = emu.counters.snapshot()["token_grants"]
    emu.revoke_all_tokens()
    answers = await asyncio.gather(*(call_over(sidecar, client, 5) for client in range(CONNECTIONS)))
    assert answers == [expected(client, 5) for client in range(CONNECTIONS)], sidecar.log()
    after = emu.counters.snapshot()["token_grants"]
    assert after["client_credentials"] == grants["client_credentials"] + 1
    assert after["jwt_bearer"] == grants["jwt_bearer"] + 1


async def test_a_recreated_endpoint_is_looked_up_once_for_all_workers(emu: Emulator, launch: Launch) -> None:
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro")
    assert await asyncio.gather(*(call_over(sidecar, client, 2) for client in range(4))) == [
        expected(client, 2) for client in range(4)
    ]
    before = emu.counters.snapshot()
    emu.recreate_endpoint("fraud-ro")

    answers = await asyncio.gather(*(call_over(sidecar, client, 5) for client in range(CONNECTIONS)))
    assert answers == [expected(client, 5) for client in range(CONNECTIONS)], sidecar.log()
    after = emu.counters.snapshot()
    assert after["metadata_reads"]["fraud-ro"] == before["metadata_reads"]["fraud-ro"] + 1
    assert after["token_grants"]["jwt_bearer"] == before["token_grants"]["jwt_bearer"] + 1


async def in_flight(sidecar: SidecarProcess) -> float:
    return total(await metrics_text(sidecar), "serving_sidecar_in_flight_requests", front="http")


async def slow_calls(sidecar: SidecarProcess, count: int) -> list[asyncio.Task[list[tuple[int, bytes]]]]:
    """`count` calls in flight on as many connections (spread over the workers), once they all arrived."""
    tasks = [asyncio.create_task(call_over(sidecar, client, 1)) for client in range(count)]
    await eventually(lambda: in_flight_is(sidecar, count), f"{count} calls in flight")
    return tasks


async def in_flight_is(sidecar: SidecarProcess, count: int) -> bool:
    return await in_flight(sidecar) == count


async def test_sigterm_drains_every_worker_and_exits_zero(emu: Emulator, launch: Launch) -> None:
    emu.faults.latency["fraud-ro"] = 2.0
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro", "--drain-delay", "0.5", "--drain-timeout", "10")
    workers = children(sidecar.process.pid)
    calls = await slow_calls(sidecar, 4)  # two in each worker
    signalled = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    status = 200
    while status == 200 and time.monotonic() - signalled < 0.5:  # the signal is handled asynchronously
        status = (await readiness(sidecar))[0]
    assert status == 503, "readiness did not turn 503 within the drain delay"
    assert [await call for call in calls] == [expected(client, 1) for client in range(4)]
    assert await sidecar.wait(15) == 0, sidecar.log()
    assert time.monotonic() - signalled < 0.5 + 10
    await eventually(lambda: not any(alive(pid) for pid in workers), "no worker process left")


async def test_the_drain_timeout_cuts_calls_in_every_worker(emu: Emulator, launch: Launch) -> None:
    emu.faults.latency["fraud-ro"] = 60.0
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro", "--drain-delay", "0", "--drain-timeout", "1")
    workers = children(sidecar.process.pid)
    calls = await slow_calls(sidecar, 4)
    signalled = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(15) == 0, sidecar.log()
    assert time.monotonic() - signalled < 0 + 1 + 5  # drain_delay + drain_timeout, with room for a loaded machine
    for call in calls:
        try:
            answer = await call
        except aiohttp.ClientError:
            continue  # cut, as documented
        raise AssertionError(f"a 60 s call was answered within the 1 s drain: {answer}")
    await eventually(lambda: not any(alive(pid) for pid in workers), "no worker process left")


async def test_a_second_signal_stops_every_process_at_once(emu: Emulator, launch: Launch) -> None:
    emu.faults.latency["fraud-ro"] = 60.0
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro", "--drain-delay", "0", "--drain-timeout", "60")
    workers = children(sidecar.process.pid)
    calls = await slow_calls(sidecar, 2)
    sidecar.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(5) == 128 + signal.SIGTERM, sidecar.log()
    await eventually(lambda: not any(alive(pid) for pid in workers), "no worker process left")
    await asyncio.gather(*calls, return_exceptions=True)


async def test_quitquitquit_stops_every_worker(launch: Launch) -> None:
    sidecar = await launch("--workers", "2", "--drain-delay", "0")
    workers = children(sidecar.process.pid)
    async with aiohttp.ClientSession() as session, session.post(sidecar.url("/quitquitquit", "admin")) as resp:
        assert resp.status == 200
    assert await sidecar.wait(15) == 0, sidecar.log()
    await eventually(lambda: not any(alive(pid) for pid in workers), "no worker process left")


async def test_workers_that_keep_dying_make_the_sidecar_unready_without_spinning(launch: Launch) -> None:
    sidecar = await launch("--workers", "2", "--drain-delay", "0")
    killed: set[int] = set()
    for _ in range(5):  # the restart policy's limit within its 60 s window
        await eventually(lambda: len(children(sidecar.process.pid) - killed) == 2, "both workers running")
        victim = min(children(sidecar.process.pid) - killed)
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        line = f"(pid {victim}) was killed by SIGKILL"
        await eventually(lambda: line in sidecar.log(), "the exit logged")  # noqa: B023 (awaited here)

    status, reason = await readiness(sidecar)
    assert status == 503 and "crash-looping" in reason, reason
    assert "HTTP workers are crash-looping" in sidecar.log()
    survivors = children(sidecar.process.pid)
    assert len(survivors) == 1
    await asyncio.sleep(1.0)  # the next restart waits until the first exit is 60 s old: nothing starts now
    assert children(sidecar.process.pid) == survivors
    assert await call_over(sidecar, 0, 1) == expected(0, 1)  # the surviving worker still answers
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(15) == 0, sidecar.log()


async def test_the_grpc_front_stays_in_the_parent_with_the_same_tokens_and_metrics(
    emu: Emulator, launch: Launch
) -> None:
    grpc_port = free_port()
    sidecar = await launch("--workers", "2", "--endpoint", "fraud-ro", "--grpc-listen", f"127.0.0.1:{grpc_port}")
    body = json.dumps({"dataframe_records": [{"a": 1}]}).encode()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.ServingProxyStub(channel)
        for _ in range(5):
            answer = await stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=body), timeout=10)
            assert answer.json_body == b'{"predictions":[1]}'
    assert await call_over(sidecar, 0, 5) == expected(0, 5)

    await eventually(lambda: requests_are(sidecar, 10), "both fronts' calls on /metrics")
    text = await metrics_text(sidecar)
    assert total(text, "serving_sidecar_requests_total", front="grpc", code="200") == 5
    assert total(text, "serving_sidecar_requests_total", front="http", code="200") == 5
    counters = emu.counters.snapshot()
    assert counters["token_grants"]["client_credentials"] == counters["token_grants"]["jwt_bearer"] == 1
