"""The shared fan-out behind ``GET /api/events`` (Server-Sent Events): alerts and latest-position changes.

Clients that watch the same view (``web.params.normal_view``: bbox, where and limit) share one
:class:`View`: one task searches the latest index once per refresh period (WEB_SSE_REFRESH), however many
clients watch it, compares the answer with the previous one, and puts the features that changed into
every watcher's queue as one ``latest`` event (built once, shared). A view's task ends one period after
its last watcher left, so clients coming and going never search more often than once a period either.

Every client has a :class:`Subscriber`: a bounded queue (WEB_SSE_QUEUE) that is filled without ever
waiting; when it is full, its oldest event is dropped and counted. A client that lost a ``latest``
event is sent the whole view at the next period (``full``), so its map is right again; lost alerts are
lost (they are still in /api/alerts and in the ring for a resume). One client's slowness therefore costs
only that client: the searches and the other queues never wait for it.

The fan-out's cost is bounded by its settings, not by what clients ask: a view holds and pushes at most
``view_features`` features (WEB_SSE_VIEW_FEATURES; a larger ``limit`` is cut to it, so such views share),
and all views together reserve at most ``feature_budget`` features (WEB_SSE_FEATURE_BUDGET; each view
reserves its limit when it starts, so the bound holds before any search): a new view beyond it is refused
like one beyond WEB_SSE_MAX_VIEWS. The searches per period, the answers held and the events built are
therefore bounded by the budget. When views end, their memory is handed back to the kernel (``release``,
once per period at most), since the processes keep freed heap otherwise (geoiot.malloc).

Alerts come from :class:`web.alerts.AlertBuffer` (a listener per hub) and go to every client whatever its
view. The fetching of a view is passed in (``fetch``), so this module has no Elasticsearch in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from web.alerts import AlertBuffer, Entry
from web.metrics import Metrics
from web.params import LatestParams

log = logging.getLogger("web.events")

# (total tracks in view, their features in the answer's order): what one search of a view gives.
Fetch = Callable[[LatestParams], Awaitable[tuple[int, list[dict[str, Any]]]]]
ALERT, LATEST, GAP = "alert", "latest", "gap"
# The reconnection delay a browser's EventSource is told (the stream's first line), in ms.
SSE_RETRY_MS = 3000
# Seconds one event may take to be written before a stalled client is cut off (its queue drops meanwhile).
SSE_SEND_TIMEOUT = 30.0


@dataclass(frozen=True)
class Event:
    """One SSE event: its type, its ``data`` (one line of JSON) and its ``id`` (the alerts' resume token)."""

    kind: str
    data: str
    id: str | None = None


class Counters:
    """What the hub counts, as plain ints (for tests) and in the server's Prometheus metrics when given."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.searches = 0
        self.search_errors = 0
        self.dropped: dict[str, int] = {ALERT: 0, LATEST: 0, GAP: 0}

    def drop(self, kind: str) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        if self.metrics is not None:
            self.metrics.sse_dropped.labels(kind).inc()

    def searched(self) -> None:
        self.searches += 1
        if self.metrics is not None:
            self.metrics.sse_searches.inc()

    def search_failed(self) -> None:
        self.search_errors += 1
        if self.metrics is not None:
            self.metrics.sse_search_errors.inc()


class Subscriber:
    """One client's bounded queue. ``put`` never waits; ``get`` waits for events (or closing)."""

    def __init__(self, maxlen: int, counters: Counters, floor: dict[int, int] | None) -> None:
        self.maxlen = maxlen
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._counters = counters
        self.floor = floor  # alerts at or below these offsets were sent already (None: only live ones)
        self.needs_full = True  # the next latest event is the whole view (first one, or after a drop)
        self.dropped = 0
        self.closed = False
        self.view: View | None = None

    def put(self, event: Event) -> None:
        if len(self._queue) >= self.maxlen:
            old = self._queue.popleft()
            self.dropped += 1
            self._counters.drop(old.kind)
            if old.kind == LATEST:
                self.needs_full = True
        self._queue.append(event)
        self._wake.set()

    def put_backlog(self, event: Event) -> None:
        """A resumed stream's alerts from the ring: bounded by the ring (WEB_SSE_RING), not by the queue."""
        self._queue.append(event)
        self._wake.set()

    def offer_alert(self, entry: Entry) -> None:
        if self.floor is None:
            if not entry.live:
                return
        elif entry.offset <= self.floor.get(entry.partition, -1):
            return
        self.put(Event(ALERT, entry.data, entry.cursor))

    async def get(self, timeout: float) -> list[Event]:
        """Every event waiting (oldest first), waiting up to ``timeout`` s for one; [] on timeout or close."""
        if not self._queue and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []
        events = list(self._queue)
        self._queue.clear()
        return events

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)


class View:
    """One distinct view: its watchers, the features of its last answer (by track, as JSON) and its task."""

    def __init__(self, params: LatestParams) -> None:
        self.params = params
        self.subscribers: set[Subscriber] = set()
        self.features: dict[str, bytes] | None = None  # track -> feature JSON, in the answer's order
        self.total = 0
        self.task: asyncio.Task[None] | None = None
        self._last_total = 0

    def full_event(self, cursor: str | None) -> Event:
        return Event(LATEST, collection(self.total, True, [], list((self.features or {}).values())), cursor)

    def update(self, total: int, features: list[dict[str, Any]], cursor: str | None) -> None:
        """Take a new answer and queue what changed for every watcher (the whole view where it is due)."""
        new: dict[str, bytes] = {}
        for f in features:
            new[str(f.get("id"))] = orjson.dumps(f)
        old = self.features
        changed = [b for track, b in new.items() if old is None or old.get(track) != b]
        removed = [] if old is None else [track for track in old if track not in new]
        self.features, self.total = new, total
        diff = None
        if old is not None and (changed or removed or total != self._last_total):
            diff = Event(LATEST, collection(total, False, removed, changed), cursor)
        self._last_total = total
        full = None
        for sub in self.subscribers:
            if sub.needs_full:
                full = full or self.full_event(cursor)
                sub.needs_full = False
                sub.put(full)
            elif diff is not None:
                sub.put(diff)


def collection(total: int, full: bool, removed: list[str], features: list[bytes]) -> str:
    """A ``latest`` event's data: a GeoJSON FeatureCollection of the features that changed (all when
    ``full``), plus ``total`` (tracks in view), ``full`` and ``removed`` (tracks no longer in view)."""
    head = orjson.dumps({"type": "FeatureCollection", "total": total, "full": full, "removed": removed})
    return b"".join((head[:-1], b',"features":[', b",".join(features), b"]}")).decode()


class Hub:
    """Every open stream and view of one server."""

    def __init__(self, fetch: Fetch, alerts: AlertBuffer, *, period: float, queue_size: int,
                 max_clients: int, max_views: int = 100, counters: Counters | None = None,
                 view_features: int = 10_000, feature_budget: int | None = None,
                 release: Callable[[], object] | None = None) -> None:
        self.fetch = fetch
        self.alerts = alerts
        self.period = period
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.max_views = max_views  # each view is a search per period and its answer in memory
        self.view_features = view_features
        self.feature_budget = feature_budget if feature_budget is not None else max_views * view_features
        self.release = release
        self._release_due: asyncio.TimerHandle | None = None
        self.counters = counters or Counters()
        self.views: dict[LatestParams, View] = {}
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        alerts.listeners.add(self._on_alert)

    @property
    def clients(self) -> int:
        return len(self.subscribers)

    @property
    def reserved(self) -> int:
        """Features the watched views may hold (the sum of their limits), at most the budget."""
        return sum(v.params.limit for v in self.views.values())

    @property
    def held(self) -> int:
        """Features the watched views hold now."""
        return sum(len(v.features or ()) for v in self.views.values())

    def bounded(self, view: LatestParams) -> LatestParams:
        """The view as the fan-out serves it: its limit cut to WEB_SSE_VIEW_FEATURES."""
        return view if view.limit <= self.view_features else dataclasses.replace(view, limit=self.view_features)

    def _on_alert(self, entry: Entry) -> None:
        for sub in self.subscribers:
            sub.offer_alert(entry)

    def subscribe(self, view: LatestParams, resume: dict[int, int] | None = None) -> Subscriber:
        """A new stream of ``view``; with ``resume``, first the alerts of the ring after it (and a ``gap``
        event before them when some are no longer kept). Raises OverflowError at WEB_SSE_MAX_CLIENTS streams
        or, for a view not watched yet, at WEB_SSE_MAX_VIEWS views or beyond WEB_SSE_FEATURE_BUDGET (the
        view's limit is first cut to WEB_SSE_VIEW_FEATURES)."""
        if self.closed:
            raise RuntimeError("the server is shutting down")
        view = self.bounded(view)
        if len(self.subscribers) >= self.max_clients:
            raise OverflowError(f"{self.max_clients} event streams are open already (WEB_SSE_MAX_CLIENTS)")
        if view not in self.views and len(self.views) >= self.max_views:
            raise OverflowError(f"{self.max_views} distinct views are watched already (WEB_SSE_MAX_VIEWS); "
                                "watch one of them or poll /api/latest")
        if view not in self.views and self.reserved + view.limit > self.feature_budget:
            raise OverflowError(f"the watched views hold {self.reserved} of {self.feature_budget} features "
                                f"(WEB_SSE_FEATURE_BUDGET), this view needs {view.limit}; watch a view with a "
                                "smaller limit or poll /api/latest")
        # no await from here to the end: nothing can be read between the backlog and the registration
        sub = Subscriber(self.queue_size, self.counters, None if resume is None else dict(resume))
        if resume is not None:
            entries, gap = self.alerts.after(resume)
            if gap:
                sub.put_backlog(Event(GAP, json.dumps({
                    "after": ",".join(f"{p}:{o}" for p, o in sorted(resume.items())),
                    "kept": len(entries),
                    "message": "some alerts after this token are no longer kept (WEB_SSE_RING); what is kept "
                               "follows, /api/alerts has the recent ones"}, separators=(",", ":"))))
            for entry in entries:
                sub.put_backlog(Event(ALERT, entry.data, entry.cursor))
            merged = dict(resume)
            merged.update(self.alerts.positions())
            sub.floor = merged
        self.subscribers.add(sub)
        v = self.views.get(view)
        if v is None:
            v = self.views[view] = View(view)
            v.task = asyncio.create_task(self._run(v), name="sse-view")
        v.subscribers.add(sub)
        sub.view = v
        if v.features is not None:  # a view already running: its last answer now, changes from the next one
            sub.needs_full = False
            sub.put(v.full_event(self.alerts.cursor or None))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if sub.view is not None:
            sub.view.subscribers.discard(sub)  # its task ends at its next period when nobody is left
        sub.close()

    async def _run(self, view: View) -> None:
        loop = asyncio.get_running_loop()
        try:
            while view.subscribers and not self.closed:
                began = loop.time()
                try:
                    total, features = await self.fetch(view.params)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Elasticsearch away or busy: keep the last answer, try next period
                    self.counters.search_failed()
                    log.warning(json.dumps({"event": "sse_view_search_failed",
                                            "error": f"{type(exc).__name__}: {str(exc)[:200]}"}))
                else:
                    self.counters.searched()
                    view.update(total, features, self.alerts.cursor or None)
                await asyncio.sleep(max(0.0, self.period - (loop.time() - began)))
        finally:  # no watcher left (none can join between the check above and here: no await between)
            if self.views.get(view.params) is view:
                del self.views[view.params]
            view.features = None
            self._release_soon()

    def _release_soon(self) -> None:
        """Hand freed memory back once the ended views' last events are gone (a period on), once per period."""
        if self.release is None or self._release_due is not None or self.closed:
            return

        def run() -> None:
            self._release_due = None
            self.release()  # type: ignore[misc]

        self._release_due = asyncio.get_running_loop().call_later(self.period, run)

    async def close(self) -> None:
        """End every stream and view (the server is stopping)."""
        self.closed = True
        self.alerts.listeners.discard(self._on_alert)
        for sub in list(self.subscribers):
            sub.close()
        tasks = [v.task for v in self.views.values() if v.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.views.clear()
        if self._release_due is not None:
            self._release_due.cancel()
            self._release_due = None
