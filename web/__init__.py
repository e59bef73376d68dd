"""The read-only query API and the static Leaflet map."""
