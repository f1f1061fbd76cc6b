"""Re-resolution after a 403/404: concurrent callers that hit the recreated endpoint all get the new one."""

import asyncio
import json

from proxy.endpoints import Resolution, Resolver


class Metadata:
    """A fake metadata API: the endpoint's current id; `gate` holds every lookup until set."""

    def __init__(self) -> None:
        self.endpoint_id = "old"
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, name: str) -> tuple[int, bytes]:
        self.reads += 1
        await self.gate.wait()
        url = f"https://{self.endpoint_id}.serving.example/1/serving-endpoints/{name}/invocations"
        doc = {
            "id": self.endpoint_id,
            "route_optimized": True,
            "data_plane_info": {"query_info": {"endpoint_url": url, "authorization_details": self.endpoint_id}},
        }
        return 200, json.dumps(doc).encode()


async def test_callers_that_hit_the_old_host_during_a_recheck_share_its_answer() -> None:
    metadata = Metadata()
    resolver = Resolver(metadata.fetch, workspace_url="https://ws.example", ttl=300)
    stale = await resolver.resolve("fraud")
    metadata.endpoint_id = "new"
    metadata.gate.clear()
    first = asyncio.create_task(resolver.recheck(stale))
    await asyncio.sleep(0)  # the first recheck's lookup is in flight
    second = asyncio.create_task(resolver.recheck(stale))
    await asyncio.sleep(0)
    metadata.gate.set()
    results: list[Resolution | None] = list(await asyncio.gather(first, second))
    assert [r.endpoint_id if r else None for r in results] == ["new", "new"]
    assert metadata.reads == 2  # the first resolution and one recheck


async def test_an_unchanged_endpoint_is_rechecked_at_most_once_per_interval() -> None:
    metadata = Metadata()
    resolver = Resolver(metadata.fetch, workspace_url="https://ws.example", ttl=300)
    stale = await resolver.resolve("fraud")
    assert await resolver.recheck(stale) is None
    assert await resolver.recheck(stale) is None
    assert metadata.reads == 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_expired_resolutions_are_served_while_a_background_lookup_refreshes_them() -> None:
    metadata, clock = Metadata(), Clock()
    changed: list[Resolution] = []

    async def on_change(old: Resolution) -> None:
        changed.append(old)

    resolver = Resolver(metadata.fetch, workspace_url="https://ws.example", ttl=300, clock=clock, on_change=on_change)
    first = await resolver.resolve("fraud")
    clock.now = 301
    metadata.endpoint_id = "new"
    metadata.gate.clear()
    assert await resolver.resolve("fraud") == first  # no wait on the workspace API
    metadata.gate.set()
    await settle()
    assert (await resolver.resolve("fraud")).endpoint_id == "new"
    assert changed == [first]  # the old resolution's token can be forgotten
    assert metadata.reads == 2


async def test_a_workspace_outage_keeps_the_known_resolution_and_retries_later() -> None:
    metadata, clock = Metadata(), Clock()
    resolver = Resolver(metadata.fetch, workspace_url="https://ws.example", ttl=300, clock=clock)
    known = await resolver.resolve("fraud")

    async def down(name: str) -> tuple[int, bytes]:
        metadata.reads += 1
        return 503, b"unavailable"

    resolver._fetch = down
    clock.now = 301
    for _ in range(5):
        assert await resolver.resolve("fraud") == known
        await settle()
    assert metadata.reads == 2  # one failed refresh, then a pause before the next
    assert await resolver.recheck(known) is None  # a failed re-check answers "no newer resolution"
