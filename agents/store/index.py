"""The observation index: a template with the document model's mapping, daily indices behind one alias.

Documents go to the daily index of their event time (:mod:`geoiot.documents`), so the same event
always lands in the same index under the same ``_id``; the template gives every such index the alias
``<IOT_INDEX>``, which is what readers (web, tests) query. The template forbids auto-creation: a daily
index exists only once the sink created it, within ``IOT_MAX_NEW_INDICES`` (:mod:`agents.store.sink`).

The latest-position index ``<IOT_INDEX>_latest`` (one document per track, :mod:`geoiot.documents`) gets
its own template with the same mapping and no alias, so a bulk request recreates it alike if it is deleted.
"""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch, BadRequestError

from geoiot.config import Settings
from geoiot.documents import index_pattern, latest_index, mapping_for
from geoiot.schema import Preset


PRIORITY = 200


def template_body(settings: Settings, preset: Preset, index: str | None = None) -> dict[str, Any]:
    base = index or settings.iot_index
    return {
        "index_patterns": [index_pattern(base)],
        "priority": PRIORITY,
        # Only the sink creates daily indices (through IOT_MAX_NEW_INDICES): a bulk request for a day deleted
        # meanwhile (retention) gets index_not_found, which the sink answers by creating it within the cap.
        "allow_auto_create": False,
        "template": {
            "settings": _index_settings(settings),
            "mappings": mapping_for(preset),
            "aliases": {base: {}},
        },
        "_meta": {"managed_by": "geoiot", "schema": preset.name},
    }


def latest_template_body(settings: Settings, preset: Preset, index: str | None = None) -> dict[str, Any]:
    """The latest index's template: the observation mapping, no alias (``<base>`` must not count it twice)."""
    base = index or settings.iot_index
    return {
        "index_patterns": [latest_index(base)],
        "priority": PRIORITY,
        "template": {"settings": _index_settings(settings), "mappings": mapping_for(preset)},
        "_meta": {"managed_by": "geoiot", "schema": preset.name},
    }


def _index_settings(settings: Settings) -> dict[str, Any]:
    return {
        "number_of_shards": settings.iot_index_shards,
        "number_of_replicas": settings.iot_index_replicas,
        "refresh_interval": settings.iot_index_refresh,
    }


class IndexSetupError(RuntimeError):
    """Elasticsearch refused the index template (an overlapping template, a bad setting); the message says which."""


async def ensure_index(es: AsyncElasticsearch, settings: Settings, preset: Preset, index: str | None = None) -> None:
    """Create or update both templates and create the latest index (idempotent); existing indices keep
    their mapping."""
    base = index or settings.iot_index
    for name, pattern, body in ((base, index_pattern(base), template_body(settings, preset, base)),
                                (latest_index(base), latest_index(base), latest_template_body(settings, preset, base))):
        try:
            await es.indices.put_index_template(name=name, **body)
        except BadRequestError as exc:  # not worth retrying: the request itself is refused
            reason = _reason(exc)
            hint = ("; choose an IOT_INDEX whose pattern no other template matches, or delete the other template"
                    if "overlapping" in reason or "matching patterns" in reason else "")
            raise IndexSetupError(f"Elasticsearch refused the index template {name!r} (IOT_INDEX={settings.iot_index}, "
                                  f"pattern {pattern}): {reason}{hint}") from None
    # Created here, not by the sink's first bulk request: it must never count against IOT_MAX_NEW_INDICES.
    await es.options(ignore_status=400).indices.create(index=latest_index(base))


def _reason(exc: BadRequestError) -> str:
    """Elasticsearch's own explanation of a refused request, without the response dump."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("reason") or error.get("type") or exc.message)
    return str(error or exc.message)


async def drop_index(es: AsyncElasticsearch, base: str) -> None:
    """Delete everything :func:`ensure_index` and the agents made for ``base``: the daily indices, the latest
    index and both templates (tests and benchmarks clean up with it)."""
    await es.options(ignore_status=404).indices.delete(index=f"{index_pattern(base)},{latest_index(base)}",
                                                       expand_wildcards="all", ignore_unavailable=True)
    for name in (base, latest_index(base)):
        await es.options(ignore_status=404).indices.delete_index_template(name=name)
