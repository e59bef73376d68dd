"""Why the agents are slow: how fast Faust hands events to an agent, vs. aiokafka's raw getmany.

Produces N small JSON events (3 partitions), then times from first to last event:
1. aiokafka ``getmany(max_records=2000)`` on the topic (the transport's own speed);
2. a Faust worker whose agent only counts, with ``stream.noack().noack_take(2000, within=0.25)`` and an
   explicit ``ack`` per event (as agents/app.py does): mode ``faust-take``;
3. a Faust agent iterating the stream one event at a time (auto ack): mode ``faust-iter``.

    .venv/bin/python -m bench.agents_faust_delivery [faust-take faust-iter]     (FB_N=100000 events)
    FB_FAST=1 ... : EXPERIMENT, not used by the agents: replaces ``Consumer.wait_first`` (4 asyncio tasks
    per message in faust's ``_drain_messages``) with an inline first step; see docs/BENCHMARKS.md (Agents).

Each Faust run is a fresh worker process (``app.main()``) with a new consumer group; needs the local stack.
"""
import asyncio, os, sys, time, uuid
from typing import Any

async def _finish(coro: Any, waiting: Any) -> Any:
    """Drive a coroutine that suspended on ``waiting`` to its end, the way an asyncio Task would."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)  # a bare ``yield`` (sleep(0)) inside the coroutine
            else:
                await asyncio.wait((waiting,))
        except asyncio.CancelledError as exc:
            if waiting is not None:
                waiting.cancel()
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _fast_wait_first(original: Any) -> Any:
    """``Consumer.wait_first`` without four tasks per message when the delivery does not block.

    Faust's fetch loop hands every message over as ``wait_first(callback(message),
    suspend_flow.wait())`` (``faust.transport.consumer._drain_messages``), which creates four asyncio
    tasks per message (callback, suspend_flow, stopped, crashed): about half of the per-event cost
    (see docs/BENCHMARKS.md, Agents). Here the callback's first step runs inline; if it completes
    without suspending (the stream buffer had room: the usual case) no task is created at all. If
    it suspends (buffer full, flow control, producer buffer), the rest of it runs as a task under
    the original ``wait_first``, so a rebalance (``suspend_flow``), stop or crash still interrupts
    it exactly as before. Any other call, or one made while the flow is suspended, stopped or
    crashed, goes to the original unchanged.
    """
    event_wait = asyncio.Event.wait.__code__

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if (len(coros) != 2 or timeout is not None or not asyncio.iscoroutine(coros[0])
                or getattr(coros[1], "cr_code", None) is not event_wait  # suspend_flow.wait()
                or self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set()):
            return await original(self, *coros, timeout=timeout)
        callback, suspended = coros
        try:
            waiting = callback.send(None)
        except StopIteration:
            suspended.close()
            return None  # _drain_messages ignores the result
        except BaseException:
            suspended.close()
            raise  # as the original: the callback's exception propagates
        return await original(self, _finish(callback, waiting), suspended, timeout=timeout)

    wait_first.__wrapped__ = original  # type: ignore[attr-defined]
    return wait_first


def install_fast_delivery() -> None:
    """Patch Faust's consumer class once (idempotent)."""
    from faust.transport.consumer import Consumer

    if not hasattr(Consumer.wait_first, "__wrapped__"):
        Consumer.wait_first = _fast_wait_first(Consumer.wait_first)


N = int(os.environ.get("FB_N", "100000"))
TOPIC = os.environ.get("FB_TOPIC")
MODE = os.environ.get("FB_MODE", "")
BOOT = "127.0.0.1:9092"

if MODE.startswith("faust"):
    import faust
    size = int(os.environ.get("FB_SIZE", "2000"))
    app = faust.App("fb-" + uuid.uuid4().hex[:6], broker=f"kafka://{BOOT}", value_serializer="raw", key_serializer="raw",
                    store="memory://", datadir=os.path.join(__import__("tempfile").gettempdir(), "geoiot-faust-delivery"), web_enabled=False, consumer_auto_offset_reset="earliest",
                    stream_wait_empty=False, topic_partitions=3,
                    stream_buffer_maxsize=int(os.environ.get("FB_BUF", "8000")),
                    broker_max_poll_records=int(os.environ.get("FB_POLL", "2000")))
    if os.environ.get("FB_FAST"):
        install_fast_delivery()
    src = app.topic(TOPIC, value_serializer="raw", key_serializer="raw")
    state = {"n": 0, "t0": None}
    @app.agent(src)
    async def count(stream):
        if MODE == "faust-take":
            manual = stream.noack()
            async for events in manual.noack_take(size, within=0.25):
                if state["t0"] is None: state["t0"] = time.perf_counter()
                for e in events: await manual.ack(e)
                state["n"] += len(events)
                if state["n"] >= N: break
        else:
            async for v in stream:
                if state["t0"] is None: state["t0"] = time.perf_counter()
                state["n"] += 1
                if state["n"] >= N: break
        dt = time.perf_counter() - state["t0"]
        print(f"RESULT {MODE} {state['n']} events in {dt:.2f}s = {state['n']/dt:,.0f} ev/s", flush=True)
        os._exit(0)
    if __name__ == "__main__":
        sys.argv = [sys.argv[0], "worker", "-l", "warn"]
        app.main()
else:
    from aiokafka import AIOKafkaProducer, AIOKafkaConsumer
    from geoiot import topics
    import subprocess, orjson
    async def produce(topic):
        await topics.ensure_topic(BOOT, topics.TopicSpec(topic, 3))
        p = AIOKafkaProducer(bootstrap_servers=BOOT, linger_ms=5, max_batch_size=262144); await p.start()
        futs = []
        for i in range(N):
            v = orjson.dumps({"id": f"t{i%5000}", "time": 1700000000000+i, "lon": -73.9, "lat": 40.7, "speed": 3.2, "extra": "x"*60})
            futs.append(await p.send(topic, v, key=f"t{i%5000}".encode()))
        await asyncio.gather(*futs); await p.stop()
    async def raw(topic):
        c = AIOKafkaConsumer(topic, bootstrap_servers=BOOT, auto_offset_reset="earliest", group_id="fbraw"+uuid.uuid4().hex[:6],
                             max_poll_records=2000, enable_auto_commit=False)
        await c.start(); n = 0; t0 = None
        while n < N:
            got = await c.getmany(timeout_ms=250, max_records=2000)
            for tp, msgs in got.items():
                if t0 is None: t0 = time.perf_counter()
                n += len(msgs)
        dt = time.perf_counter() - t0; await c.stop()
        print(f"RESULT aiokafka-getmany {n} events in {dt:.2f}s = {n/dt:,.0f} ev/s", flush=True)
    topic = "fb-" + uuid.uuid4().hex[:8]
    asyncio.run(produce(topic))
    asyncio.run(raw(topic))
    for mode in sys.argv[1:] or ["faust-take", "faust-iter"]:
        env = dict(os.environ, FB_MODE=mode, FB_TOPIC=topic)
        subprocess.run([sys.executable, __file__], env=env, timeout=300, cwd=__import__("tempfile").gettempdir())
    asyncio.run(topics.delete_topics(BOOT, [topic]))
