"""Sinks of the agents: Elasticsearch (bulk, idempotent ids, retried until it succeeds) and stdout.

``write(actions)`` first creates the daily indices the actions need (at most ``max_new_indices`` per
call; actions for more are refused with the reason), then returns only when every action is stored
or permanently refused (a 4xx such as a mapping error, returned to the caller for the dead-letter
topic; a request refused as a whole is split until the refused document is alone). Rejections that may pass later
(429, 5xx) and connection errors are retried with capped exponential back-off for as long as it
takes, so an Elasticsearch outage only grows the consumer lag: the agent acks the batch's offsets
only after ``write`` returned.

The request is one ``_bulk`` call per batch with a body the pipeline already wrote (:class:`agents.bulk.Bulk`;
``write(actions)`` serialises dicts into one first); the response's items are matched to the entries by
position, as Elasticsearch answers them in request order. This replaced ``async_streaming_bulk``, which
re-serialised, chunked and matched every action in Python (docs/BENCHMARKS.md, "batch core").

Actions with ``version_type`` (the latest positions, :func:`geoiot.documents.latest_action`) travel in the
same bulk request. Their version conflict (409) only means Elasticsearch holds a report as new or newer:
it is counted (``on_conflict``), neither retried nor returned as refused.
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

from agents.bulk import Bulk

log = logging.getLogger("agents.sink")

RETRY_STATUS = (429, 500, 502, 503, 504)
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


def serialized_action(action: dict[str, Any]) -> tuple[bytes, bytes]:
    """Both bulk lines of an action as the helpers' ``expand_action`` would write them, in orjson bytes (the
    format :class:`agents.bulk.Bulk` entries keep; the tests hold the two equal).

    Our actions carry only ``_op_type``, ``_index``, ``_id``, ``_source`` and, for the latest positions,
    ``version`` and ``version_type``. The helpers' default ``expand_action`` copies each one and probes it for
    twenty metadata keys: 13 % of a worker's CPU (py-spy, 1 worker draining).
    """
    meta = {"_index": action["_index"], "_id": action["_id"]}
    if "version_type" in action:
        meta["version"], meta["version_type"] = action["version"], action["version_type"]
    return orjson.dumps({action.get("_op_type", "index"): meta}), orjson.dumps(action["_source"])


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
                 setup: Callable[[AsyncElasticsearch], Any] | None = None,
                 max_new_indices: int = 10) -> None:
        self.client = client
        self.max_new_indices = max_new_indices
        self._existing: set[str] = set()  # indices known to exist: created or found by this sink
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.on_retry = on_retry or (lambda reason: None)
        self.on_bulk = on_bulk or (lambda seconds, n: None)
        self.on_conflict = on_conflict or (lambda n: None)
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
                status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
                if isinstance(exc, ApiError) and status not in RETRY_STATUS:
                    raise
                attempt += 1
                self._failing(f"{what}: {type(exc).__name__} {status or ''}".strip(), attempt)
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

    async def _prepare_indices(self, bulk: Bulk) -> tuple[Bulk, Rejected]:
        """Create the batch's missing indices before the bulk request, at most ``max_new_indices`` of them.

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
            if created >= self.max_new_indices:
                refused.add(name)
                continue
            await self._retrying(f"create index {name}", lambda: self.client.options(ignore_status=400)
                                 .indices.create(index=name))
            self._existing.add(name)
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
        """Store the prepared request; returns the entries refused for good, as actions with the reason."""
        if not len(bulk):
            return []
        pending, rejected = await self._prepare_indices(bulk)
        return rejected + await self._write(pending)

    async def _write(self, pending: Bulk) -> Rejected:
        rejected: Rejected = []
        attempt = 0
        while len(pending):
            started = time.perf_counter()
            try:
                response = await self.client.bulk(operations=pending.body(), filter_path=BULK_RESPONSE_FIELDS)
            except (TransportError, ApiError) as exc:
                status = getattr(exc, "status_code", None)
                if isinstance(exc, ApiError) and status not in RETRY_STATUS:
                    # The whole request is refused (e.g. 400 on a malformed body): halve it until the
                    # document it refuses is alone, so its neighbours are stored.
                    if len(pending) > 1:
                        half = len(pending) // 2
                        return (rejected + await self._write(pending.subset(range(half)))
                                + await self._write(pending.subset(range(half, len(pending)))))
                    return rejected + [(pending.action(0), f"elasticsearch refused the request: {status} {exc}")]
                attempt += 1
                self._failing(f"bulk: {type(exc).__name__} {status or ''}".strip(), attempt)
                await asyncio.sleep(min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 16)))
                continue
            self.on_bulk(time.perf_counter() - started, len(pending))
            body = response.body if hasattr(response, "body") else response
            retry: list[int] = []
            stale = 0
            if body.get("errors"):
                items = body.get("items") or []
                if len(items) != len(pending):  # cannot happen: one item per operation, in order
                    raise RuntimeError(f"bulk response has {len(items)} items for {len(pending)} operations")
                for i, item in enumerate(items):
                    info = next(iter(item.values()))
                    status = info.get("status")
                    if status is None or status < 300:
                        continue
                    if status in RETRY_STATUS:
                        retry.append(i)
                    elif status == 409 and pending.versions[i] is not None:
                        stale += 1  # a versioned write refused: the stored document is as new or newer
                    else:
                        rejected.append((pending.action(i), f"elasticsearch refused the document: {_error_text(info)}"))
            if stale:
                self.on_conflict(stale)
            if retry:
                attempt += 1
                self._failing(f"{len(retry)} document(s) rejected with a retryable status", attempt)
                await asyncio.sleep(min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 16)))
                pending = pending.subset(retry)
            else:
                self._ok()
                break
        return rejected


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
