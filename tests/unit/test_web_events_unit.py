"""Fast tests of the event streams' pure parts: the alert ring and its resume tokens, the bounded queues,
the views' diffs and the shared fan-out (with a counting fetch in place of Elasticsearch: what is tested
here is how often the hub asks, not what Elasticsearch answers; tests/integration/test_web_events.py does that)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from web import where
from web.alerts import AlertBuffer, format_cursor, parse_cursor
from web.events import ALERT, GAP, LATEST, Counters, Event, Hub, Subscriber, View
from web.params import WORLD, BadRequest, LatestParams


def feature(track: str, lon: float) -> dict[str, Any]:
    return {"type": "Feature", "id": track, "geometry": {"type": "Point", "coordinates": [lon, 0.0]},
            "properties": {"track": track}}


@given(st.dictionaries(st.integers(0, 99), st.integers(0, 10**12), min_size=1, max_size=8))
def test_resume_tokens_round_trip(positions: dict[int, int]) -> None:
    assert dict(parse_cursor(format_cursor(positions), "t")) == positions


@pytest.mark.parametrize("text", ["", "x", "0:", ":1", "0:1,", "0:1;1:2", "-1:3", "0:1,0:2", "0:1\n"])
def test_bad_tokens_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_cursor(text, "Last-Event-ID")


def test_the_header_wins_over_the_query_and_views_are_normalised() -> None:
    q = MultiDict([("last_event_id", "0:1"), ("where", "b:2"), ("where", "a:1"), ("where", "a:1")])
    fields = {"a": "int", "b": "int"}
    p = where.event_params(q, "0:5", fields)
    assert p.resume == ((0, 5),)
    assert where.event_params(q, None, fields).resume == ((0, 1),)
    assert where.event_params(MultiDict(), None).resume is None
    other = where.event_params(MultiDict([("where", "a:1"), ("where", "b:2")]), None, fields)
    assert other.view == p.view  # order and repetition of filters do not make another view


def test_ring_resumes_after_a_token_and_says_when_it_lost_some() -> None:
    ring = AlertBuffer(maxlen=3)
    assert ring.start_partition(0, 0, 0) == 0 and ring.start_partition(1, 0, 0) == 0
    tokens = [ring.add({"n": i}, i % 2, i // 2).cursor for i in range(6)]  # type: ignore[union-attr]
    # kept: n=3 (1:1), n=4 (0:2), n=5 (1:2); lost: n=0..2
    entries, gap = ring.after(dict(parse_cursor(tokens[3], "t")))
    assert [json.loads(e.data)["n"] for e in entries] == [4, 5] and not gap
    entries, gap = ring.after(dict(parse_cursor(tokens[0], "t")))
    assert [json.loads(e.data)["n"] for e in entries] == [3, 4, 5] and gap
    assert ring.add({"n": 9}, 0, 2) is None  # read again after a reconnect: kept once


def test_a_restarted_consumer_starts_after_what_it_holds_and_records_what_it_skipped() -> None:
    ring = AlertBuffer(maxlen=10)
    assert ring.start_partition(0, 0, 100) == 90  # the last 10 of 100
    entries, gap = ring.after({0: 50})
    assert gap and entries == []
    for o in range(90, 100):
        entry = ring.add({"o": o}, 0, o)
        assert entry is not None and not entry.live  # the backlog is not pushed to new streams
    assert ring.start_partition(0, 0, 105) == 100  # reconnected: after what it holds, not 10 back
    assert ring.add({"o": 100}, 0, 100).live  # type: ignore[union-attr]


def test_a_full_queue_drops_its_oldest_counts_it_and_owes_a_whole_view() -> None:
    counters = Counters()
    sub = Subscriber(3, counters, None)
    sub.needs_full = False
    for i, kind in enumerate([LATEST, ALERT, ALERT, ALERT, ALERT]):
        sub.put(Event(kind, str(i)))
    assert len(sub) == 3 and counters.dropped == {ALERT: 1, LATEST: 1, GAP: 0} and sub.dropped == 2
    assert sub.needs_full  # it lost a latest event: the next one is the whole view
    assert [e.data for e in asyncio.run(sub.get(0.01))] == ["2", "3", "4"]


def test_a_view_sends_the_whole_view_once_then_only_changes_and_removals() -> None:
    view = View(LatestParams(WORLD, 10))
    a, b = Subscriber(10, Counters(), None), Subscriber(10, Counters(), None)
    view.subscribers = {a, b}
    view.update(2, [feature("x", 1), feature("y", 2)], "0:1")
    view.update(2, [feature("x", 1), feature("y", 2)], "0:1")  # nothing changed: nothing sent
    view.update(2, [feature("x", 1.5), feature("z", 3)], "0:2")
    for sub in (a, b):
        events = asyncio.run(sub.get(0.01))
        assert [e.kind for e in events] == [LATEST, LATEST]
        first, second = (json.loads(e.data) for e in events)
        assert first["full"] and [f["id"] for f in first["features"]] == ["x", "y"]
        assert not second["full"] and second["removed"] == ["y"]
        assert [f["id"] for f in second["features"]] == ["x", "z"] and events[1].id == "0:2"


async def test_many_clients_on_one_view_share_one_fetch_per_period() -> None:
    calls: list[LatestParams] = []

    async def fetch(p: LatestParams) -> tuple[int, list[dict[str, Any]]]:
        calls.append(p)
        return 1, [feature("x", float(len(calls)))]

    hub = Hub(fetch, AlertBuffer(10), period=0.1, queue_size=8, max_clients=100)
    one, two = LatestParams(WORLD, 10), LatestParams(WORLD, 5)
    subs = [hub.subscribe(one if i % 10 else two) for i in range(50)]
    await asyncio.sleep(0.55)
    assert len(hub.views) == 2
    assert 2 * 2 <= len(calls) <= 2 * 7  # two views, at most six or seven periods: not fifty clients' worth
    with pytest.raises(OverflowError):
        for _ in range(51):
            hub.subscribe(one)
    for sub in list(hub.subscribers):
        hub.unsubscribe(sub)
    await asyncio.sleep(0.25)
    assert hub.views == {}  # ended one period after their last client left
    assert all(len(s) > 0 for s in subs)
    await hub.close()


async def test_alerts_reach_every_stream_and_a_resumed_one_gets_the_ring_first() -> None:
    async def fetch(p: LatestParams) -> tuple[int, list[dict[str, Any]]]:
        return 0, []

    ring = AlertBuffer(2)
    ring.start_partition(0, 0, 0)
    hub = Hub(fetch, ring, period=10, queue_size=8, max_clients=10)
    live = hub.subscribe(LatestParams(WORLD, 10))
    for i in range(3):
        ring.add({"n": i}, 0, i)
    resumed = hub.subscribe(LatestParams(WORLD, 10), {0: 0})  # it saw n=0; the ring holds n=1, n=2
    late = hub.subscribe(LatestParams(WORLD, 10), {0: 0})
    ring.add({"n": 3}, 0, 3)  # the ring now holds n=2, n=3
    gapped = hub.subscribe(LatestParams(WORLD, 10), {0: 0})
    got = [e for e in await live.get(0.01) if e.kind == ALERT]
    assert [json.loads(e.data)["n"] for e in got] == [0, 1, 2, 3]
    for sub in (resumed, late):
        events = [e for e in await sub.get(0.01) if e.kind != LATEST]
        assert [(e.kind, json.loads(e.data)["n"]) for e in events] == [(ALERT, 1), (ALERT, 2), (ALERT, 3)]
    events = [e for e in await gapped.get(0.01) if e.kind != LATEST]
    assert [e.kind for e in events] == [GAP, ALERT, ALERT]  # n=1 left the ring
    assert json.loads(events[0].data)["after"] == "0:0" and json.loads(events[0].data)["kept"] == 2
    assert [json.loads(e.data)["n"] for e in events[1:]] == [2, 3]
    await hub.close()
