"""The benchmark's floor: the reverse proxy a user could write in an afternoon with aiohttp.

    python scripts/bench_proxy.py --listen 127.0.0.1:PORT --upstream https://127.0.0.1:PORT --ca-file ca.pem

One process, one ClientSession with a keep-alive pool, a static bearer, request and answer bodies read
whole. Prints "ready" once listening. Used by scripts/bench.py only.
"""

from __future__ import annotations

import argparse
import ssl

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def build_app(upstream: str, ca_file: str, token: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca_file), limit=64)
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {"Content-Type": request.content_type, "Authorization": f"Bearer {token}"}
        session: aiohttp.ClientSession = app["session"]
        async with session.post(upstream + request.path_qs, data=await request.read(), headers=headers) as reply:
            body = await reply.read()
            kept = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=reply.status, body=body, headers=kept)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="https://HOST:PORT")
    parser.add_argument("--ca-file", required=True, help="CA that signed the upstream's certificate")
    parser.add_argument("--token", default="bench-static-token", help="bearer sent upstream")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    app = build_app(args.upstream.rstrip("/"), args.ca_file, args.token)
    web.run_app(app, host=host, port=int(port), access_log=None, print=lambda _: print("ready", flush=True))


if __name__ == "__main__":
    main()
