"""Wait until a service's ``/healthz`` answers 200.

Whatever starts a service as a subprocess (tests, benchmarks, scripts) must not race its start-up, and
must fail with a clear message, not somewhere later, when it never becomes healthy.
"""

from __future__ import annotations

import asyncio

import aiohttp


async def wait_healthy(session: aiohttp.ClientSession, base_url: str, timeout: float = 10.0,
                       interval: float = 0.1) -> None:
    """Poll ``base_url + "/healthz"``; raise :class:`TimeoutError` naming the last answer after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    while True:
        try:
            async with session.get(base_url + "/healthz") as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except aiohttp.ClientError as exc:
            last = type(exc).__name__
        if loop.time() >= deadline:
            raise TimeoutError(f"{base_url}/healthz not healthy after {timeout:g} s (last: {last})")
        await asyncio.sleep(interval)
