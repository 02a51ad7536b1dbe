"""The no-logic relay: the floor of a Python relay, measured beside the gateway in the same run.

`POST /v1/chat/completions` in (aiohttp server), the same body out to the upstream (aiohttp client, one
pooled connection per stream), and the upstream's response bytes written back unchanged as they arrive:
no parsing, no event objects, no metrics. On uvloop, like `audiochat serve`, so the difference between
the two is what the gateway does per event, not which event loop it runs on.

Run alone: `python -m benchmarks.relay --upstream http://127.0.0.1:8000/v1` prints `{"port": ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

import aiohttp
from aiohttp import web

from benchmarks import loop

FORWARDED_HEADERS = ("authorization", "content-type")
# Generous: the relay must never be the one refusing a benchmark's concurrency.
MAX_CONNECTIONS = 10_000


def make_app(upstream: str) -> web.Application:
    """The relay as an aiohttp application forwarding to `upstream` (a base URL ending in /v1)."""
    app = web.Application()
    url = upstream.rstrip("/") + "/chat/completions"

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        session: aiohttp.ClientSession = app["session"]
        async with session.post(url, data=body, headers=headers) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status)
            response.content_type = upstream_response.content_type
            await response.prepare(request)
            async for data in upstream_response.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", relay)
    return app


async def _serve(upstream: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, e.g. http://host:port/v1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run(_serve(args.upstream, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
