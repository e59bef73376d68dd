"""The observation index: a template with the document model's mapping, daily indices behind one alias.

Documents go to the daily index of their event time (:mod:`geoiot.documents`), so the same event
always lands in the same index under the same ``_id``; the template gives every such index the alias
``<IOT_INDEX>``, which is what readers (web, tests) query.
"""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch

from geoiot.config import Settings
from geoiot.documents import index_pattern, mapping_for
from geoiot.schema import Preset


def template_body(settings: Settings, preset: Preset, index: str | None = None) -> dict[str, Any]:
    base = index or settings.iot_index
    return {
        "index_patterns": [index_pattern(base)],
        "priority": 200,
        "template": {
            "settings": {
                "number_of_shards": settings.iot_index_shards,
                "number_of_replicas": settings.iot_index_replicas,
                "refresh_interval": settings.iot_index_refresh,
            },
            "mappings": mapping_for(preset),
            "aliases": {base: {}},
        },
        "_meta": {"managed_by": "geoiot", "schema": preset.name},
    }


async def ensure_index(es: AsyncElasticsearch, settings: Settings, preset: Preset, index: str | None = None) -> None:
    """Create or update the template (idempotent); existing daily indices keep their mapping."""
    base = index or settings.iot_index
    body = template_body(settings, preset, base)
    await es.indices.put_index_template(name=base, **body)
