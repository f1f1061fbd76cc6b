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
