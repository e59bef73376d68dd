"""Webhook delivery against real local HTTP targets (issue 22, item 8): concurrent and bounded, a
circuit breaker for a hanging or failing target, alerts that waited behind it delivered at once when it
recovers, and the drop rule (older than max_age: expired; queue full: oldest dropped) counted."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from agents.webhook import Breaker, Webhook
from testkit.hook_target import serve_hook


class Target:
    """A local aiohttp server whose answer the test sets: "hang", an HTTP status, or "ok" (204)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.received: list[tuple[str, dict]] = []  # (mode it met, alert)
        self.in_flight = 0
        self.most_in_flight = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        alert = await request.json()
        mode = self.mode
        self.received.append((mode, alert))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode == "ok":
                await asyncio.sleep(0.05)  # a little work, so concurrent requests overlap
                return web.Response(status=204)
            return web.Response(status=int(mode))
        finally:
            self.in_flight -= 1


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    async with serve_hook(t.handle) as t.url:
        yield t


async def until(check: Callable[[], bool], timeout: float = 30) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def drained(hook: Webhook, timeout: float = 60) -> None:
    await asyncio.wait_for(hook.queue.join(), timeout)


def observed(target: Target, **kwargs: Any) -> tuple[Webhook, Counter[str], list[bool]]:
    """A webhook to ``target`` with its outcomes counted and its circuit's changes recorded."""
    outcomes: Counter[str] = Counter()
    circuit: list[bool] = []
    hook = Webhook(target.url, on_result=lambda o: outcomes.update([o]), on_circuit=circuit.append, **kwargs)
    return hook, outcomes, circuit


async def with_hook(hook: Webhook, body: Callable[[Webhook], Awaitable[None]]) -> None:
    await hook.start()
    try:
        await body(hook)
    finally:
        await hook.stop()


async def test_a_hanging_target_costs_a_few_requests_not_one_hang_per_alert(target: Target) -> None:
    """20 alerts to a target that never answers: the breaker opens after 3 failed attempts, so the target
    sees at most 3 + 4 (the requests already in flight) requests, not 20 x (1 + retries); the alerts that
    waited longer than max_age are counted expired, none is lost silently."""
    target.mode = "hang"
    hook, outcomes, circuit = observed(target, timeout=0.3, retries=1, backoff=0.01, breaker_failures=3,
                                       cooldown=3600, concurrency=4, max_age=1.5)

    async def body(hook: Webhook) -> None:
        for i in range(20):
            hook.submit({"track": f"t{i}", "event": "enter"})
        await drained(hook)

    await with_hook(hook, body)
    assert sum(outcomes.values()) == 20 and outcomes["sent"] == 0
    assert outcomes["expired"] >= 20 - 7 and set(outcomes) <= {"failed", "expired"}
    assert len(target.received) <= 3 + 4
    assert circuit == [True]


async def test_alerts_waiting_behind_a_failing_target_go_at_once_when_it_recovers(target: Target) -> None:
    """A target answering 500: the breaker opens, the alerts wait (no request meanwhile); the target
    recovers, the probe succeeds and every waiting alert is delivered, concurrently (bounded by
    ``concurrency``), each exactly once."""
    target.mode = "500"
    hook, outcomes, circuit = observed(target, timeout=2, retries=3, backoff=0.01, breaker_failures=3,
                                       cooldown=0.5, concurrency=4, max_age=60)

    async def body(hook: Webhook) -> None:
        for i in range(30):
            hook.submit({"track": f"t{i}", "event": "enter"})
        await until(lambda: circuit == [True])
        refused = len(target.received)
        await asyncio.sleep(0.2)
        assert len(target.received) == refused  # open: no request
        target.mode = "ok"
        await drained(hook)

    await with_hook(hook, body)
    assert outcomes == {"sent": 30} and circuit == [True, False]
    delivered = [a["track"] for mode, a in target.received if mode == "ok"]
    assert sorted(delivered) == sorted(f"t{i}" for i in range(30))
    assert sum(mode == "500" for mode, _ in target.received) <= 3 + 4
    assert 1 < target.most_in_flight <= 4


async def test_a_refusing_target_is_up_its_4xx_does_not_open_the_circuit(target: Target) -> None:
    target.mode = "400"
    hook, outcomes, _ = observed(target, breaker_failures=2, concurrency=2)

    async def body(hook: Webhook) -> None:
        for i in range(10):
            hook.submit({"track": f"t{i}"})
        await drained(hook)

    await with_hook(hook, body)
    assert outcomes == {"failed": 10} and len(target.received) == 10 and not hook.breaker.is_open


def test_breaker_opens_after_n_failures_in_a_row_then_probes_once_per_cooldown() -> None:
    now = [0.0]
    b = Breaker(failures=3, cooldown=10, clock=lambda: now[0])
    assert b.acquire() and not b.failure() and not b.failure()
    assert b.success() is False and b.failures == 0  # a success in between resets the count
    assert not b.failure() and not b.failure() and b.failure() and b.is_open
    assert not b.acquire() and b.wait() == 10
    now[0] = 9.9
    assert not b.acquire()
    now[0] = 10
    assert b.acquire() and not b.acquire()  # one probe at a time
    assert not b.failure() and b.is_open and b.wait() == 10  # the probe failed: another cooldown
    now[0] = 20
    assert b.acquire() and b.success() and not b.is_open and b.acquire()
