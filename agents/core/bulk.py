"""A bulk request prepared as bytes: each entry's action line and document, its index, ``_id``, external version
and operation.

The pipeline writes documents straight into entries (the documents of a batch encoded together), the sink
sends them as one request body and maps the response's items back by position (Elasticsearch answers the
items in request order). Entries are turned back into the bulk-action dicts of
:mod:`geoiot.documents` only when a caller asks for them (a refused document, the Spark job, a test).

Operations: an observation is an ``index`` (a redelivered batch rewrites the same bytes), except a *late*
report's (:mod:`agents.core.motion`), which is a ``create`` (:data:`LATE_OP`): when its ``_id`` is already
stored, Elasticsearch answers 409 and the stored document (with the motion it was computed with) stays; the
sink counts that as already stored (:mod:`agents.store.es_errors`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson


INDEX = "index"
CREATE = "create"
OPS = (INDEX, CREATE)
LATE_OP = CREATE  # the operation of a late report's observation: never overwrite what is stored under its _id


def meta_line(index: str, doc_id: str, version: int | None = None, op: str = INDEX) -> bytes:
    """The action line of an operation, exactly as ``orjson.dumps`` writes the action's metadata."""
    if version is None:
        return orjson.dumps({op: {"_index": index, "_id": doc_id}})
    return orjson.dumps({op: {"_index": index, "_id": doc_id, "version": version, "version_type": "external"}})


class Bulk:
    """Entries of a bulk request: ``metas[i]`` is entry ``i``'s action line, ``sources[i]`` its document (both
    without the newline). Kept apart so no entry is copied into a line of its own: the body is one join.
    ``creates`` holds the positions of the ``create`` entries (the others are ``index``)."""

    __slots__ = ("index", "ids", "metas", "sources", "versions", "creates")

    def __init__(self, index: list[str] | None = None, ids: list[str] | None = None,
                 metas: list[bytes] | None = None, sources: list[bytes] | None = None,
                 versions: list[int | None] | None = None, creates: set[int] | None = None) -> None:
        self.index = index if index is not None else []
        self.ids = ids if ids is not None else []
        self.metas = metas if metas is not None else []
        self.sources = sources if sources is not None else []
        self.versions = versions if versions is not None else [None] * len(self.ids)
        self.creates = creates if creates is not None else set()

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: "Bulk") -> "Bulk":
        shift = len(self)
        return Bulk(self.index + other.index, self.ids + other.ids, self.metas + other.metas,
                    self.sources + other.sources, self.versions + other.versions,
                    self.creates | {shift + i for i in other.creates})

    def append(self, index: str, doc_id: str, source: bytes, version: int | None = None, op: str = INDEX) -> None:
        if op not in OPS:
            raise ValueError(f"bulk operation {op!r} is not supported (only {', '.join(OPS)})")
        if op == CREATE:
            self.creates.add(len(self.ids))
        self.index.append(index)
        self.ids.append(doc_id)
        self.metas.append(meta_line(index, doc_id, version, op))
        self.sources.append(source)
        self.versions.append(version)

    def op(self, i: int) -> str:
        """Entry ``i``'s operation."""
        return CREATE if i in self.creates else INDEX

    def subset(self, positions: Iterable[int]) -> "Bulk":
        positions = list(positions)
        creates = self.creates
        return Bulk([self.index[i] for i in positions], [self.ids[i] for i in positions],
                    [self.metas[i] for i in positions], [self.sources[i] for i in positions],
                    [self.versions[i] for i in positions],
                    {j for j, i in enumerate(positions) if i in creates} if creates else set())

    @property
    def lines(self) -> list[bytes]:
        """Each entry's two NDJSON lines (``meta + b"\\n" + source + b"\\n"``)."""
        return [meta + b"\n" + source + b"\n" for meta, source in zip(self.metas, self.sources)]

    def body(self) -> bytes:
        if not self.ids:
            return b""
        parts: list[bytes] = [b""] * (2 * len(self.ids))
        parts[0::2] = self.metas
        parts[1::2] = self.sources
        return b"\n".join(parts) + b"\n"

    def source(self, i: int) -> bytes:
        return self.sources[i]

    def action(self, i: int) -> dict[str, Any]:
        """Entry ``i`` as the action dict :func:`geoiot.documents.action` / ``latest_action`` makes."""
        source = orjson.loads(self.source(i))
        op = self.op(i)
        if self.versions[i] is None:
            return {"_op_type": op, "_index": self.index[i], "_id": self.ids[i], "_source": source}
        return {"_op_type": op, "_index": self.index[i], "_id": self.ids[i], "version": self.versions[i],
                "version_type": "external", "_source": source}

    def actions(self) -> list[dict[str, Any]]:
        return [self.action(i) for i in range(len(self))]

    @classmethod
    def from_actions(cls, actions: Sequence[dict[str, Any]]) -> "Bulk":
        """Entries of bulk-action dicts (``_op_type`` index or create, as :mod:`geoiot.documents` and
        :meth:`action` build them)."""
        out = cls()
        for a in actions:
            out.append(a["_index"], a["_id"], orjson.dumps(a["_source"]),
                       a.get("version") if "version_type" in a else None, a.get("_op_type", INDEX))
        return out
