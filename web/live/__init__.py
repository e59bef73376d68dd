"""The web server's in-memory mirror of the live layer (geoiot.live): each track's newest document, kept as
columns (:mod:`web.live.table`), filled and followed from the live topic (:mod:`web.live.follower`), and the
``where`` filters evaluated on those columns (:mod:`web.live.filters`). /api/latest, /api/aggregate?source=latest
and the /api/events views answer from it instead of Elasticsearch's ``_latest`` index."""
