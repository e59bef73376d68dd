"""Sinks of the agents: Elasticsearch (bulk, idempotent ids, retried until it succeeds) and stdout.

``write(actions)`` first creates the daily indices the actions need (at most ``max_new_indices`` per
call; actions for more are refused with the reason), then returns only when every action is stored
or refused for good. What is retried and what is refused is decided in one place, :mod:`agents.store.es_errors`:
whatever the cluster will accept later (blocks, a closed or missing index, unassigned shards, no master,
429/5xx, connection errors) is retried with capped exponential back-off for as long as it takes, so it only
grows the consumer lag (the agent acks the batch's offsets only after ``write`` returned); only a refusal of
the document itself (a mapping error, a refused ``_id``) is returned to the caller for the dead-letter topic.
A request refused as a whole is retried whole when the refusal is temporary (never split), and split until
the refused document is alone when it is not. The daily index template forbids auto-creation
(:mod:`agents.store.index`), so an index deleted meanwhile comes back as ``index_not_found`` and is created again
here, through the same cap.

The request is one ``_bulk`` call per batch with a body the pipeline already wrote (:class:`agents.core.bulk.Bulk`;
``write(actions)`` serialises dicts into one first); the response's items are matched to the entries by
position, as Elasticsearch answers them in request order.

Actions with ``version_type`` (the latest positions, versioned by the event time) are written
after the observations of the same call are stored, so a latest position is always a stored observation: the
entry of a refused observation is replaced by the newest stored observation of its track in the call (or
dropped when there is none). Their version conflict (409) only means Elasticsearch holds a report as new
or newer: it is counted (``on_conflict``), neither retried nor returned as refused. Likewise the 409 of a
``create`` (a late report's observation, :data:`agents.core.bulk.LATE_OP`) means its ``_id`` is already stored
and stays as it is: counted (``on_duplicate``), neither retried nor refused.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
from elasticsearch import AsyncElasticsearch
from elasticsearch.exceptions import ApiError, TransportError
from elasticsearch.serializer import OrjsonSerializer

from agents.core.bulk import Bulk
from agents.store.es_errors import Fate, error_type, fate, item_fate, response_error
from geoiot.documents import doc_id, id_parts, keeps_latest

log = logging.getLogger("agents.store.sink")

# Only what write() reads from a bulk response (items are matched by position): status and error.
BULK_RESPONSE_FIELDS = ["errors", "items.*.status", "items.*.error"]

Rejected = list[tuple[dict[str, Any], str]]  # (action, reason)


class Sink(Protocol):
    name: str
    keeps_latest: bool  # whether the latest-position actions are written to it too

    async def start(self) -> None: ...

    async def write(self, actions: Sequence[dict[str, Any]]) -> Rejected: ...

    # Optional: ``async def write_bulk(self, bulk: Bulk) -> Rejected`` takes the prepared request instead
    # (the consumer uses it when a sink has it).

    async def stop(self) -> None: ...


def es_client(hosts: list[str], request_timeout: float = 30) -> AsyncElasticsearch:
    """The client used by the sink (and by the benchmark's baseline, so both serialise alike)."""
    return AsyncElasticsearch(hosts, request_timeout=request_timeout, serializer=OrjsonSerializer(),
                              retry_on_timeout=False, max_retries=0)


class ElasticsearchSink:
    name = "elasticsearch"
    keeps_latest = True

    def __init__(self, client: AsyncElasticsearch, *, initial_backoff: float = 0.2, max_backoff: float = 10.0,
                 on_retry: Callable[[str], None] | None = None,
                 on_bulk: Callable[[float, int], None] | None = None,
                 on_conflict: Callable[[int], None] | None = None,
                 on_duplicate: Callable[[int], None] | None = None,
                 setup: Callable[[AsyncElasticsearch], Any] | None = None,
                 max_new_indices: int = 10, keeps_latest: bool = True) -> None:
        """``keeps_latest``: IOT_ES_LATEST, whether the batches' latest positions are written too (the
        ``<index>_latest`` index, for Kibana; the web servers mirror the live topic instead)."""
        self.client = client
        self.keeps_latest = keeps_latest
        self.max_new_indices = max_new_indices
        self._existing: set[str] = set()  # indices known to exist: created or found by this sink
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.on_retry = on_retry or (lambda reason: None)
        self.on_bulk = on_bulk or (lambda seconds, n: None)
        self.on_conflict = on_conflict or (lambda n: None)
        self.on_duplicate = on_duplicate or (lambda n: None)
        self._setup = setup
        self.healthy_since: float | None = None
        self.failing_since: float | None = None

    async def start(self) -> None:
        if self._setup is not None:
            await self._retrying("index template", lambda: self._setup(self.client))

    async def stop(self) -> None:
        await self.client.close()

    async def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                result = await call()
                self._ok()
                return result
            except (TransportError, ApiError) as exc:
                status, error = _status_and_error(exc)
                if isinstance(exc, ApiError) and fate(status, error) is Fate.REFUSE:
                    raise
                attempt += 1
                self._failing(f"{what}: {_describe(exc, status, error)}", attempt)
                await self._backoff(attempt)

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 16)))

    def _ok(self) -> None:
        if self.failing_since is not None:
            log.info("elasticsearch is back after %.1f s", time.monotonic() - self.failing_since)
        self.failing_since = None

    def _failing(self, reason: str, attempt: int) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.on_retry(reason)
        log.warning("elasticsearch unavailable (%s), attempt %d; retrying with back-off", reason, attempt)

    async def _prepare_indices(self, bulk: Bulk, budget: list[int]) -> tuple[Bulk, Rejected]:
        """Create the batch's missing indices before the bulk request, at most ``budget[0]`` of them (taken
        from it: one call of :meth:`write_bulk` creates at most ``max_new_indices``, re-creations included).

        The bulk request would otherwise create every missing index itself, inside one request, with
        no bound: a batch of events spread over years exhausts the cluster's shards. Entries for the
        indices beyond the cap are refused with the reason (dead letters), the earliest days kept.
        """
        wanted = sorted(set(bulk.index) - self._existing)
        refused: set[str] = set()
        created = 0
        for name in wanted:
            exists = await self._retrying(f"index {name}", lambda: self.client.indices.exists(index=name))
            if exists:
                self._existing.add(name)
                continue
            if budget[0] <= 0:
                refused.add(name)
                continue
            await self._retrying(f"create index {name}", lambda: self.client.options(ignore_status=400)
                                 .indices.create(index=name))
            self._existing.add(name)
            budget[0] -= 1
            created += 1
        if created:
            log.info("created %d daily index(es) ahead of the bulk request", created)
        if not refused:
            return bulk, []
        reason = (f"the batch needs more than IOT_MAX_NEW_INDICES={self.max_new_indices} new daily indices; "
                  "this event's index was not created")
        log.warning("%d daily index(es) not created: over IOT_MAX_NEW_INDICES=%d", len(refused), self.max_new_indices)
        keep = [i for i, name in enumerate(bulk.index) if name not in refused]
        return bulk.subset(keep), [(bulk.action(i), reason) for i, name in enumerate(bulk.index) if name in refused]

    async def write(self, actions: Sequence[dict[str, Any]]) -> Rejected:
        return await self.write_bulk(Bulk.from_actions(actions))

    async def write_bulk(self, bulk: Bulk) -> Rejected:
        """Store the prepared request; returns the entries refused for good, as actions with the reason.

        Observations first, then the latest positions of what was stored (see the module's docstring)."""
        if not len(bulk):
            return []
        budget = [self.max_new_indices]
        latest = [i for i, v in enumerate(bulk.versions) if v is not None]
        if not latest or len(latest) == len(bulk):
            return await self._store(bulk, budget)
        latest_set = set(latest)
        observations = bulk.subset(i for i in range(len(bulk)) if i not in latest_set)
        rejected = await self._store(observations, budget)
        return rejected + await self._store(stored_latest(observations, bulk.subset(latest), rejected), budget)

    async def _store(self, bulk: Bulk, budget: list[int]) -> Rejected:
        if not len(bulk):
            return []
        pending, rejected = await self._prepare_indices(bulk, budget)
        return rejected + await self._write(pending, budget)

    async def _write(self, pending: Bulk, budget: list[int]) -> Rejected:
        rejected: Rejected = []
        attempt = 0
        while len(pending):
            started = time.perf_counter()
            try:
                response = await self.client.bulk(operations=pending.body(), filter_path=BULK_RESPONSE_FIELDS)
            except (TransportError, ApiError) as exc:
                status, error = _status_and_error(exc)
                if isinstance(exc, ApiError) and fate(status, error) is Fate.REFUSE:
                    # The whole request is refused for something in it (e.g. 400 on an _id over 512 bytes):
                    # halve it until the document it refuses is alone, so its neighbours are stored.
                    if len(pending) > 1:
                        half = len(pending) // 2
                        return (rejected + await self._write(pending.subset(range(half)), budget)
                                + await self._write(pending.subset(range(half, len(pending))), budget))
                    return rejected + [(pending.action(0), f"elasticsearch refused the request: {status} {exc}")]
                # Temporary (a cluster block, no master, an outage): the same request again, never split.
                attempt += 1
                self._failing(f"bulk: {_describe(exc, status, error)}", attempt)
                await self._backoff(attempt)
                continue
            self.on_bulk(time.perf_counter() - started, len(pending))
            body = response.body if hasattr(response, "body") else response
            retry: list[int] = []
            missing: set[str] = set()
            why: dict[str, int] = {}
            stale = duplicates = 0
            if body.get("errors"):
                items = body.get("items") or []
                if len(items) != len(pending):  # cannot happen: one item per operation, in order
                    raise RuntimeError(f"bulk response has {len(items)} items for {len(pending)} operations")
                for i, item in enumerate(items):
                    info = next(iter(item.values()))
                    status = info.get("status")
                    if status is None or status < 300:
                        continue
                    error = info.get("error")
                    create, versioned = i in pending.creates, pending.versions[i] is not None
                    outcome = item_fate(status, error, create=create, versioned=versioned)
                    if outcome is Fate.KEPT:
                        if versioned:
                            stale += 1  # a versioned write refused: the stored document is as new or newer
                        else:
                            duplicates += 1  # a late report's create: its _id is stored already, and stays
                    elif outcome is Fate.RETRY:
                        retry.append(i)
                        kind = error_type(error) or str(status)
                        why[kind] = why.get(kind, 0) + 1
                        if kind == "index_not_found_exception":
                            missing.add(pending.index[i])
                    else:
                        rejected.append((pending.action(i), f"elasticsearch refused the document: {_error_text(info)}"))
            if stale:
                self.on_conflict(stale)
            if duplicates:
                self.on_duplicate(duplicates)
            if not retry:
                self._ok()
                break
            attempt += 1
            self._failing(f"{len(retry)} document(s) refused for now: "
                          + ", ".join(f"{n} {kind}" for kind, n in sorted(why.items())), attempt)
            pending = pending.subset(retry)
            if missing:  # deleted since it was created or found: create it again, within the cap
                self._existing -= missing
                pending, refused = await self._prepare_indices(pending, budget)
                rejected += refused
            await self._backoff(attempt)
        return rejected


def stored_latest(observations: Bulk, latest: Bulk, rejected: Rejected) -> Bulk:
    """The latest-position entries to write once ``observations`` are stored except ``rejected``: an entry
    whose own observation (in ``observations``) was refused is replaced by the newest stored observation of
    its track there, or dropped when there is none, so a latest position is always a stored observation."""
    refused = {action["_id"] for action, _ in rejected if "version_type" not in action}
    if not refused:
        return latest
    newest: dict[str, tuple[int, int]] = {}  # track -> (time ms, entry) of its newest stored observation
    for i, obs_id in enumerate(observations.ids):
        if obs_id in refused or observations.versions[i] is not None or i in observations.creates:
            continue  # a late report's create is not a latest position (its _id may hold another document)
        track, ms = id_parts(obs_id)
        seen = newest.get(track)
        if keeps_latest(ms) and (seen is None or ms >= seen[0]):
            newest[track] = (ms, i)
    out = Bulk()
    for j, track in enumerate(latest.ids):
        version = latest.versions[j]
        if version is None or doc_id(track, version) not in refused:
            out.append(latest.index[j], track, latest.sources[j], version)
            continue
        fallback = newest.get(track)
        if fallback is not None:
            out.append(latest.index[j], track, observations.sources[fallback[1]], fallback[0])
    return out


def _status_and_error(exc: Exception) -> tuple[int | None, Any]:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
    return (status if isinstance(status, int) else None), response_error(getattr(exc, "body", None))


def _describe(exc: Exception, status: int | None, error: Any) -> str:
    return " ".join(str(part) for part in (type(exc).__name__, status, error_type(error)) if part)


def _error_text(info: dict[str, Any]) -> str:
    error = info.get("error")
    if isinstance(error, dict):
        return f"{info.get('status')} {error.get('type')}: {error.get('reason')}"
    return f"{info.get('status')} {error}"


class StdoutSink:
    """One JSON line per document on stdout (the original task's console output)."""

    name = "stdout"
    keeps_latest = False  # the console shows the observations; a latest position is one of them

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout.buffer

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def write(self, actions: Sequence[dict[str, Any]]) -> Rejected:
        lines = b"".join(orjson.dumps({"_index": a["_index"], "_id": a["_id"], **a["_source"]}) + b"\n" for a in actions)
        self.stream.write(lines)
        self.stream.flush()
        return []
