"""The read-only query API and the static Leaflet map, by layer: ``app`` (state and lifecycles), ``routes``
(handlers), ``middlewares``, ``params`` and ``where`` (validation, the filter language, Elasticsearch
queries), ``search`` (Elasticsearch access), ``geojson`` (answers), ``events`` (the SSE fan-out), ``server``."""
