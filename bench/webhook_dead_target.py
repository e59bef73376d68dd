"""Delay of webhook alerts behind a dead target: the Webhook of a baseline git ref (main: one alert at a
time) against this tree's (concurrent, circuit breaker, drop rule), in the same run, same target.

    .venv/bin/python -m bench.webhook_dead_target [--dead 30] [--seconds 60] [--rate 5] [--drain 90] [--dead-mode hang|500]

A local aiohttp target answers each POST after ``--rtt`` seconds, except during the first ``--dead``
seconds, when it accepts requests and never answers (a hung server; such a request stays hung after the
target recovers, until the client's timeout), or with ``--dead-mode 500`` answers 500 at once. Alerts are submitted at ``--rate`` per second for
``--seconds``; each implementation then gets up to ``--drain`` seconds to deliver what is left. Per alert,
the delay is the time from ``submit`` to the target's receipt of its delivered POST. Both use their
defaults (timeout 5 s, 3 retries with back-off 0.5 s; this tree also: 8 in flight, breaker after 5
failed attempts, cooldown 5 s, max age 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from aiohttp import web

from testkit.hook_target import serve_hook

ROOT = Path(__file__).resolve().parent.parent


def baseline_module(ref: str) -> types.ModuleType:
    """agents/webhook.py as it is at ``ref``, loaded under another name."""
    source = subprocess.run(["git", "show", f"{ref}:agents/webhook.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType(f"alerts_{ref.replace('/', '_')}")
    exec(compile(source, f"{ref}:agents/webhook.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


class Target:
    def __init__(self, dead_until: float, rtt: float, dead_mode: str) -> None:
        self.dead_until, self.rtt, self.dead_mode = dead_until, rtt, dead_mode
        self.received: dict[int, float] = {}  # alert number -> receipt of its delivered POST
        self.hung = 0

    async def handle(self, request: web.Request) -> web.Response:
        alert = await request.json()
        if time.monotonic() < self.dead_until:
            self.hung += 1
            if self.dead_mode == "500":
                return web.Response(status=500)
            await asyncio.sleep(3600)
        await asyncio.sleep(self.rtt)
        self.received.setdefault(alert["n"], time.monotonic())
        return web.Response(status=204)


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    q = statistics.quantiles(values, n=20) if len(values) > 1 else [values[0]] * 19
    return f"{statistics.median(values):.1f} / {q[18]:.1f} / {max(values):.1f}"


async def run(make_hook: Any, args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    target = Target(start + args.dead, args.rtt, args.dead_mode)
    async with serve_hook(target.handle) as url:
        outcomes: dict[str, int] = {}
        hook = make_hook(url, lambda o: outcomes.__setitem__(o, outcomes.get(o, 0) + 1))
        await hook.start()
        submitted: dict[int, float] = {}
        try:
            n = 0
            while time.monotonic() - start < args.seconds:
                submitted[n] = time.monotonic()
                hook.submit({"n": n, "track": f"t{n}", "event": "enter"})
                n += 1
                await asyncio.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            try:
                await asyncio.wait_for(hook.queue.join(), args.drain)
            except TimeoutError:
                pass
            ended = time.monotonic()
        finally:
            await hook.stop()
    recovered = start + args.dead
    during = [target.received[i] - t for i, t in submitted.items() if t < recovered and i in target.received]
    after = [target.received[i] - t for i, t in submitted.items() if t >= recovered and i in target.received]
    last = max(target.received.values(), default=recovered)
    return {"submitted": len(submitted), "delivered": len(target.received), "outcomes": outcomes,
            "waiting at the end": hook.queue.qsize(), "requests to the dead target": target.hung,
            "delay during outage s (p50/p95/max)": quantiles(during),
            "delay after recovery s (p50/p95/max)": quantiles(after),
            "last delivery after recovery s": round(last - recovered, 1), "run s": round(ended - start, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dead", type=float, default=30.0, help="seconds the target hangs at first")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of alerts")
    parser.add_argument("--rate", type=float, default=5.0, help="alerts per second")
    parser.add_argument("--rtt", type=float, default=0.1, help="seconds the live target takes per POST")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds left to deliver after the last alert")
    parser.add_argument("--dead-mode", choices=("hang", "500"), default="hang",
                        help="while dead, hang (default) or answer 500 at once")
    parser.add_argument("--baseline-ref", default="main")
    args = parser.parse_args()
    from agents.webhook import Webhook

    old = baseline_module(args.baseline_ref).Webhook
    results = {
        f"before ({args.baseline_ref})": await run(lambda url, cb: old(url, on_result=cb), args),
        "after (this tree)": await run(lambda url, cb: Webhook(url, on_result=cb), args),
    }
    print(f"dead ({args.dead_mode}) {args.dead:g}s, alerts {args.rate:g}/s for {args.seconds:g}s, rtt {args.rtt:g}s, drain {args.drain:g}s")
    keys = list(next(iter(results.values())))
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in keys:
        print(f"| {key} | " + " | ".join(str(r[key]) for r in results.values()) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
