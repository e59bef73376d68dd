"""A bulk request prepared as bytes: each entry's action line and document, its index, ``_id`` and external version.

The pipeline writes documents straight into entries (the documents of a batch encoded together), the sink
sends them as one request body and maps the response's items back by position (Elasticsearch answers the
items in request order). Entries are turned back into the bulk-action dicts of
:mod:`geoiot.documents` only when a caller asks for them (a refused document, the Spark job, a test).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson


def meta_line(index: str, doc_id: str, version: int | None = None) -> bytes:
    """The action line of an ``index`` operation, exactly as ``orjson.dumps`` writes the action's metadata."""
    if version is None:
        return orjson.dumps({"index": {"_index": index, "_id": doc_id}})
    return orjson.dumps({"index": {"_index": index, "_id": doc_id, "version": version, "version_type": "external"}})


class Bulk:
    """Entries of a bulk request: ``metas[i]`` is entry ``i``'s action line, ``sources[i]`` its document (both
    without the newline). Kept apart so no entry is copied into a line of its own: the body is one join."""

    __slots__ = ("index", "ids", "metas", "sources", "versions")

    def __init__(self, index: list[str] | None = None, ids: list[str] | None = None,
                 metas: list[bytes] | None = None, sources: list[bytes] | None = None,
                 versions: list[int | None] | None = None) -> None:
        self.index = index if index is not None else []
        self.ids = ids if ids is not None else []
        self.metas = metas if metas is not None else []
        self.sources = sources if sources is not None else []
        self.versions = versions if versions is not None else [None] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: "Bulk") -> "Bulk":
        return Bulk(self.index + other.index, self.ids + other.ids, self.metas + other.metas,
                    self.sources + other.sources, self.versions + other.versions)

    def append(self, index: str, doc_id: str, source: bytes, version: int | None = None) -> None:
        self.index.append(index)
        self.ids.append(doc_id)
        self.metas.append(meta_line(index, doc_id, version))
        self.sources.append(source)
        self.versions.append(version)

    def subset(self, positions: Iterable[int]) -> "Bulk":
        positions = list(positions)
        return Bulk([self.index[i] for i in positions], [self.ids[i] for i in positions],
                    [self.metas[i] for i in positions], [self.sources[i] for i in positions],
                    [self.versions[i] for i in positions])

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
        if self.versions[i] is None:
            return {"_op_type": "index", "_index": self.index[i], "_id": self.ids[i], "_source": source}
        return {"_op_type": "index", "_index": self.index[i], "_id": self.ids[i], "version": self.versions[i],
                "version_type": "external", "_source": source}

    def actions(self) -> list[dict[str, Any]]:
        return [self.action(i) for i in range(len(self))]

    @classmethod
    def from_actions(cls, actions: Sequence[dict[str, Any]]) -> "Bulk":
        """Entries of bulk-action dicts (``_op_type`` index only, as :mod:`geoiot.documents` builds them)."""
        out = cls()
        for a in actions:
            op = a.get("_op_type", "index")
            if op != "index":
                raise ValueError(f"bulk operation {op!r} is not supported (only index)")
            out.append(a["_index"], a["_id"], orjson.dumps(a["_source"]),
                       a.get("version") if "version_type" in a else None)
        return out
