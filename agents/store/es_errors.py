"""What the Elasticsearch sink does with each error Elasticsearch answers: retry it, or dead-letter the document.

The one home of that rule (README, "Elasticsearch refusals"). A refusal the cluster will lift by itself or by
an operator (a block, a closed or missing index, unassigned shards, no elected master, a full queue) is
retried with back-off for as long as it lasts: the worker's ``/healthz`` says degraded meanwhile and nothing
is committed past the batch. Only a refusal of the document itself, which no retry can change (it does not
fit the mapping, its ``_id`` is refused), is final: the event goes to the dead-letter topic with the reason.

A third outcome is neither: a 409 version conflict on a ``create`` (a late report's observation, already
stored under its ``_id``: the stored document stays) or on a versioned write (a latest position older than the
stored one) means Elasticsearch already holds what counts. It is :attr:`Fate.KEPT` (:func:`item_fate`): counted,
neither retried nor dead-lettered.

An error type that is not in the table is decided by its HTTP status: 429 and 5xx are retried, any other 4xx
refuses the document (for a whole request: the request is split until the refused document is alone).
Pure: no I/O, so the sink, the Spark job and the tests share it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Fate(Enum):
    RETRY = "retry"  # the cluster will accept it later: wait, never dead-letter, never commit past it
    REFUSE = "refuse"  # the document itself is refused: dead letter with the reason
    KEPT = "kept"  # the stored document stays (a create of a stored _id, a stale versioned write): count it


RETRY_STATUS = frozenset((429, 500, 502, 503, 504))

# Elasticsearch error type -> (fate, why). Keep the README's table in step with this one.
ERRORS: dict[str, tuple[Fate, str]] = {
    # Operator or cluster states that are lifted later.
    "cluster_block_exception": (Fate.RETRY, "a block (index.blocks.write / read_only, cluster.blocks.read_only, "
                                            "the flood-stage read_only_allow_delete) is lifted by an operator or "
                                            "by the disk watermark"),
    "index_closed_exception": (Fate.RETRY, "a closed index is reopened by an operator"),
    "index_not_found_exception": (Fate.RETRY, "a daily index deleted meanwhile (retention, an operator) is "
                                              "created again by the sink, through IOT_MAX_NEW_INDICES"),
    "unavailable_shards_exception": (Fate.RETRY, "the primary shard is not assigned yet (node restart, recovery)"),
    "no_shard_available_action_exception": (Fate.RETRY, "no copy of the shard is available yet"),
    "primary_missing_action_exception": (Fate.RETRY, "the primary shard is being relocated or recovered"),
    "master_not_discovered_exception": (Fate.RETRY, "no master is elected yet"),
    "no_master_block": (Fate.RETRY, "no master is elected yet"),
    "process_cluster_event_timeout_exception": (Fate.RETRY, "the master is busy (e.g. creating many indices)"),
    "es_rejected_execution_exception": (Fate.RETRY, "a full write queue: back-pressure"),
    "circuit_breaking_exception": (Fate.RETRY, "a memory circuit breaker: back-pressure"),
    "node_closed_exception": (Fate.RETRY, "a node is shutting down"),
    "node_disconnected_exception": (Fate.RETRY, "a node left the cluster"),
    "node_not_connected_exception": (Fate.RETRY, "a node left the cluster"),
    "connect_transport_exception": (Fate.RETRY, "a node cannot be reached"),
    "receive_timeout_transport_exception": (Fate.RETRY, "a node answers too slowly"),
    "shard_not_in_primary_mode_exception": (Fate.RETRY, "the shard is being relocated"),
    "security_exception": (Fate.RETRY, "credentials or privileges are fixed by an operator; no document is "
                                       "at fault"),
    # The document itself: no retry can change the answer.
    "mapper_parsing_exception": (Fate.REFUSE, "the document does not fit the index mapping"),
    "document_parsing_exception": (Fate.REFUSE, "the document does not fit the index mapping"),
    "strict_dynamic_mapping_exception": (Fate.REFUSE, "the document has a field the mapping does not allow"),
    "illegal_argument_exception": (Fate.REFUSE, "the document or its _id is refused (e.g. a term over 32 kB, "
                                                "a field limit, a mapping change)"),
    "action_request_validation_exception": (Fate.REFUSE, "the request for this document is invalid (e.g. an "
                                                         "_id over 512 bytes)"),
    "x_content_parse_exception": (Fate.REFUSE, "the document is not valid JSON for Elasticsearch"),
    "json_parse_exception": (Fate.REFUSE, "the document is not valid JSON for Elasticsearch"),
    "version_conflict_engine_exception": (Fate.REFUSE, "a conflict on a plain index; on a create (a late report "
                                                       "already stored) or a versioned write (a stale latest "
                                                       "position) it is Fate.KEPT instead (item_fate)"),
}


def error_type(error: Any) -> str | None:
    """The ``type`` of an Elasticsearch error object (a bulk item's ``error`` or a response's ``error``)."""
    if isinstance(error, dict):
        kind = error.get("type")
        return str(kind) if kind is not None else None
    return None


def fate(status: int | None, error: Any = None) -> Fate:
    """What to do with a refusal: by the error's type when the table has it, else by its HTTP status."""
    kind = error_type(error)
    if kind is not None and kind in ERRORS:
        return ERRORS[kind][0]
    if status is None or status in RETRY_STATUS or status >= 500:
        return Fate.RETRY
    return Fate.REFUSE


def item_fate(status: int, error: Any, *, create: bool, versioned: bool) -> Fate:
    """What to do with a refused bulk item: a version conflict on a ``create`` or a versioned write keeps the
    stored document (:attr:`Fate.KEPT`); anything else as :func:`fate` says."""
    if status == 409 and (create or versioned) and error_type(error) in (None, "version_conflict_engine_exception"):
        return Fate.KEPT
    return fate(status, error)


def response_error(body: Any) -> Any:
    """The ``error`` object of a whole-request refusal's body (None when the body has none)."""
    return body.get("error") if isinstance(body, dict) else None
