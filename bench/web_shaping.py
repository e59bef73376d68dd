"""Per-request Python cost of /api/aggregate's answer: parse the Elasticsearch response, shape GeoJSON, gzip.

    .venv/bin/python -m bench.web_shaping --index bench-web

Fetches the real responses of the city (zoom 11) and street (zoom 16) views of bench/web_aggregate_latency.py
once, then times in one process, alternating, the server's path (orjson parse of the filter_path-trimmed
response, pre-serialised cell fragments, gzip level 1) against the straightforward path it replaced (stdlib
json parse of the full response, a dict per cell serialised by orjson, gzip at zlib's default level 6).
It also prints the server path's three parts (parse, shape, gzip) and the body sizes, median ms.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
import zlib

import orjson
from elasticsearch import Elasticsearch

from bench.web_aggregate_latency import T0, view_bbox
from geoiot import config
from geoiot.schema import load_preset
from web import params, where
from web.compression import gzip_body
from web.geo import precision_for_zoom
from web.geojson import aggregate_payload
from testkit.cells import cell_feature


def reference(raw: bytes, precision: int) -> bytes:
    """The straightforward path: stdlib json, one dict per cell, orjson of the whole, gzip level 6."""
    resp = json.loads(raw)
    buckets = resp.get("aggregations", {}).get("cells", {}).get("buckets", [])
    features = []
    for b in buckets:
        location = b.get("centroid", {}).get("location")
        features.append(cell_feature(b["key"], b["doc_count"], (location["lon"], location["lat"]) if location else None))
    total = resp["hits"]["total"]["value"]
    body = orjson.dumps({"type": "FeatureCollection", "precision": precision, "total": total,
                         "truncated": sum(b["doc_count"] for b in buckets) < total, "features": features})
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(body) + c.flush()


def current(raw: bytes, precision: int) -> bytes:
    return gzip_body(aggregate_payload(orjson.loads(raw), precision), "gzip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default="bench-web")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    settings = config.load(iot_index=args.index)
    preset = load_preset(settings.iot_schema)
    es = Elasticsearch(settings.es_hosts, request_timeout=60)
    print("| view (zoom, precision) | cells | ES response bytes full / trimmed | reference ms | current ms | ratio |")
    print("|---|---|---|---|---|---|")
    part_lines: list[str] = []
    for name, zoom in (("city", 11), ("street", 16)):
        bbox = params.parse_bbox(",".join(map(str, view_bbox(zoom))))
        p = params.AggregateParams(bbox, params.Window(T0, None), precision_for_zoom(zoom), None)
        body = where.aggregate_body(preset, p)
        trimmed = orjson.dumps(es.search(index=args.index, **body).body)
        full = orjson.dumps(es.search(index=args.index, **{k: v for k, v in body.items() if k != "filter_path"}).body)
        assert orjson.loads(gzip.decompress(current(trimmed, p.precision))) == \
            orjson.loads(gzip.decompress(reference(full, p.precision)))
        times: dict[str, list[float]] = {"reference": [], "current": []}
        for i in range(args.rounds):
            for label, fn, raw in (("reference", reference, full), ("current", current, trimmed))[:: 1 if i % 2 else -1]:
                began = time.perf_counter()
                fn(raw, p.precision)
                times[label].append((time.perf_counter() - began) * 1000)
        parts: dict[str, list[float]] = {"parse": [], "shape": [], "gzip": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            parsed = orjson.loads(trimmed)
            t1 = time.perf_counter()
            payload = aggregate_payload(parsed, p.precision)
            t2 = time.perf_counter()
            compressed = gzip_body(payload, "gzip")
            t3 = time.perf_counter()
            for key, seconds in (("parse", t1 - t0), ("shape", t2 - t1), ("gzip", t3 - t2)):
                parts[key].append(seconds * 1000)
        part_lines.append(f"| {name} | {' | '.join(f'{statistics.median(v):.3f}' for v in parts.values())} | "
                          f"{len(payload):,} / {len(compressed):,} |")
        ref, cur = statistics.median(times["reference"]), statistics.median(times["current"])
        cells = len(orjson.loads(trimmed).get("aggregations", {}).get("cells", {}).get("buckets", []))
        print(f"| {name} ({zoom}, {p.precision}) | {cells} | {len(full):,} / {len(trimmed):,} | {ref:.3f} | {cur:.3f} | "
              f"{ref / cur:.1f}x |")
    es.close()
    print("\n| view | parse ms | shape ms | gzip ms | GeoJSON bytes / gzipped |")
    print("|---|---|---|---|---|")
    print("\n".join(part_lines))


if __name__ == "__main__":
    main()
