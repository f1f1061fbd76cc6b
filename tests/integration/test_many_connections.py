"""1000 concurrent client connections held open and served without errors.

Raw asyncio sockets speak HTTP/1.1 keep-alive, so each of the 1000 connections is known to carry both of its
requests. Nothing here asserts a timing; the peak RSS of a sidecar process under the same load is measured
and printed by `scripts/connections.py`, not asserted.
"""

from __future__ import annotations

import asyncio
import json

from proxy.emulator import Emulator
from tests.integration import rawhttp
from tests.integration.conftest import SidecarFactory

CONNECTIONS = 1000
PATH = "/serving-endpoints/fraud-ro/invocations"


async def test_1000_concurrent_connections_are_held_open_and_served(
    emu: Emulator, make_sidecar: SidecarFactory
) -> None:
    emu.faults.latency["fraud-ro"] = 0.2  # long enough for the calls of one round to overlap
    async with make_sidecar(
        endpoint=["fraud-ro"], max_in_flight=2048, max_in_flight_per_endpoint=2048, pool_size=256
    ) as sidecar:
        port = sidecar.port("http")
        opening = asyncio.Semaphore(100)  # stay well inside the listen backlog

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with opening:
                return await asyncio.open_connection("127.0.0.1", port)

        connections = await asyncio.gather(*(connect() for _ in range(CONNECTIONS)))
        try:
            for round_number in (1, 2):  # the second round reuses every connection of the first

                async def one(index: int, round_number: int = round_number) -> tuple[int, bytes]:
                    body = json.dumps({"dataframe_records": [{"connection": index, "round": round_number}]})
                    answer = await rawhttp.exchange(connections[index], PATH, body.encode())
                    assert not answer.closes, answer.headers
                    return answer.status, answer.body

                async with asyncio.timeout(60):  # a hang guard, not a timing assertion
                    answers = await asyncio.gather(*(one(i) for i in range(CONNECTIONS)))
                wrong = [
                    (i, status, body[:200])
                    for i, (status, body) in enumerate(answers)
                    if status != 200 or json.loads(body) != {"predictions": [i + round_number]}
                ]
                assert not wrong, f"round {round_number}: {len(wrong)} wrong answers, first {wrong[:3]}"
        finally:
            for _, writer in connections:
                writer.close()
    counted = emu.counters.snapshot()
    assert counted["invocations"]["fraud-ro"]["200"] == 2 * CONNECTIONS
    assert counted["data_plane_connections"] <= 256  # 1000 callers, upstream bounded by the pool
