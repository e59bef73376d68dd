"""The ingest gateway: live devices in over HTTP, the OsmAnd / Traccar Client protocol and MQTT."""
