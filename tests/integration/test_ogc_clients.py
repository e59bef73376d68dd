"""The OGC API - Features (web/ogc) through clients and a suite no one here wrote, against the real server
process and real Elasticsearch: the OGC conformance suite (ets-ogcapi-features10, Java/TestNG, in
../shared/ogc), GDAL's OAPIF driver (Debian's gdal-bin: ogrinfo, ogr2ogr into a GeoPackage) and OWSLib.
Expected counts come from Elasticsearch itself or from the generated documents."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sqlite3
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from geoiot import topics
from geoiot.config import Settings
from testkit.ogc_data import PRESET, WORLD, drop, env_for, load, make_docs, settings_for
from testkit.served_map import get, web_server
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

# ../shared/ogc of the checkout (of /work/main; a worktree in /work/wt/<name> looks one level further up)
ETS_NAME = "ogc/ets-ogcapi-features10-1.10-SNAPSHOT-aio.jar"
ETS_JAR = next((p / "shared" / ETS_NAME for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / ETS_NAME).exists()),
               ROOT.parent / "shared" / ETS_NAME)
DEFAULT_FENCES = ROOT / "geoiot" / "presets" / "geofences-jfk.geojson"
# The window the GIS copy takes: New York, 21:30 to 03:00 (most of the walk: over 10,000 reports).
WINDOW_BOX = (-74.05, 40.6, -73.75, 40.9)
WINDOW = ("2013-01-01T21:30:00Z", "2013-01-02T03:00:00Z")


@dataclasses.dataclass
class Served:
    url: str
    index: str
    docs: list[dict[str, Any]]
    alerts: int = 0


def world_fences(path: Path) -> None:
    """The shipped fences plus a small square around each point of ogc_data.WORLD."""
    data = json.loads(DEFAULT_FENCES.read_text())
    for i, (lon, lat) in enumerate(WORLD):
        ring = [[lon - 0.2, lat - 0.2], [lon + 0.2, lat - 0.2], [lon + 0.2, lat + 0.2], [lon - 0.2, lat + 0.2],
                [lon - 0.2, lat - 0.2]]
        data["features"].append({"type": "Feature", "properties": {"id": f"world-{i}", "name": f"world {i}"},
                                 "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.write_text(json.dumps(data))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small(stack: Settings, es: AsyncElasticsearch, kafka_admin: AIOKafkaAdminClient, python_env: dict[str, str],
                output_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """3,000 reports (under the suite's 10,000 limit, so it checks numberMatched too), alerts on a topic of
    their own and fences in every box the suite asks for, behind a `python -m web` process."""
    index, topic = f"ogcets-{uuid.uuid4().hex[:10]}", f"ogcets-alerts-{uuid.uuid4().hex[:10]}"
    settings = settings_for(stack, index)
    docs = make_docs(n=3_000)
    fences = tmp_path_factory.mktemp("ogc") / "fences.geojson"
    world_fences(fences)
    await topics.ensure(kafka_admin, [topics.TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    alerts = [(lon, lat) for lon, lat in WORLD] + [(-73.78, 40.64)]
    try:
        for i, (lon, lat) in enumerate(alerts):
            await producer.send_and_wait(topic, json.dumps({"track": f"t{i}", "fence": f"world-{i}", "event": "enter",
                                                            "time": 1_357_074_000_000 + i, "lon": lon,
                                                            "lat": lat}).encode(), key=f"t{i}".encode())
    finally:
        await producer.stop()
    try:
        await load(es, settings, docs)
        env = {**env_for(settings), "IOT_ALERTS_TOPIC": topic, "IOT_GEOFENCES": str(fences)}
        with web_server(python_env, env, output_dir / "ogc-ets-server.log", timeout=60) as url:
            deadline = time.monotonic() + 60
            while json.loads(get(f"{url}/ogc/collections/alerts/items?limit=100")[1])["numberMatched"] < len(alerts):
                assert time.monotonic() < deadline, "the server did not read the alerts topic"
                time.sleep(0.5)
            yield Served(url, index, docs, len(alerts))
    finally:
        await drop(es, settings)
        await topics.delete(kafka_admin, [topic])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def big(stack: Settings, es: AsyncElasticsearch, python_env: dict[str, str],
              output_dir: Path) -> AsyncIterator[Served]:
    """14,000 reports: one window of more than 10,000, to page through."""
    index = f"ogcgis-{uuid.uuid4().hex[:10]}"
    settings = settings_for(stack, index)
    docs = make_docs()
    try:
        await load(es, settings, docs)
        with web_server(python_env, env_for(settings), output_dir / "ogc-gis-server.log", timeout=60) as url:
            yield Served(url, index, docs)
    finally:
        await drop(es, settings)


# --- the OGC conformance suite ---------------------------------------------------------------------------

# What the suite may skip: Part 2 (CRS by reference), which the server does not claim.
PART2_SKIPS = re.compile(r"Crs|verifyConformanceClass")


def run_ets(url: str, out: Path) -> ET.Element:
    if shutil.which("java") is None or not ETS_JAR.exists():
        pytest.fail(f"the conformance suite needs java 17 and {ETS_JAR}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    props = out / "props.xml"
    props.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<properties version="1.0">\n'
                     f'<entry key="iut">{url}/ogc/</entry>\n<entry key="noofcollections">-1</entry>\n</properties>\n')
    run = subprocess.run(["java", "-jar", str(ETS_JAR), "-o", str(out), str(props)], capture_output=True, text=True,
                         timeout=900)
    (out / "ets.log").write_text(run.stdout + run.stderr)
    results = sorted(out.glob("testng/*/testng-results.xml"))
    assert results, f"the suite wrote no results (exit {run.returncode}): {run.stderr[-2000:]}"
    return ET.parse(results[-1]).getroot()


async def test_the_ogc_conformance_suite_reports_no_failed_test(small: Served, output_dir: Path) -> None:
    root = run_ets(small.url, output_dir / "ogc-ets")
    methods = [m for m in root.iter("test-method") if m.get("is-config") != "true"]
    failed = [(m.get("name"), (m.findtext("exception/message") or "").strip()[:300])
              for m in methods if m.get("status") == "FAIL"]
    skipped = sorted({m.get("name") for m in methods if m.get("status") == "SKIP"})
    assert root.get("failed") == "0" and not failed, failed
    assert int(root.get("passed", "0")) >= 350, root.attrib  # every collection and every bbox box was tested
    assert all(PART2_SKIPS.search(name) for name in skipped), [n for n in skipped if not PART2_SKIPS.search(n)]
    (output_dir / "ogc-ets" / "skipped.txt").write_text("\n".join(skipped) + "\n")


# --- GDAL's OAPIF driver -----------------------------------------------------------------------------------

def gdal(*args: str) -> str:
    if shutil.which(args[0]) is None:
        pytest.skip("Debian's gdal-bin is not installed (make test installs it: apt-get install -y gdal-bin)")
    run = subprocess.run(list(args), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def feature_count(text: str) -> int:
    found = re.search(r"Feature Count: (\d+)", text)
    assert found, text[-2000:]
    return int(found[1])


async def test_ogrinfo_counts_what_elasticsearch_counts(big: Served, es: AsyncElasticsearch) -> None:
    direct = (await es.count(index=big.index))["count"]
    assert direct == len(big.docs)
    out = gdal("ogrinfo", "-ro", "-so", f"OAPIF:{big.url}/ogc", "observations")
    assert feature_count(out) == direct


def window_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from geoiot.timeparse import parse_time
    w, s, e, n = WINDOW_BOX
    start, end = parse_time(WINDOW[0]), parse_time(WINDOW[1])
    return [d for d in docs if w <= d[PRESET.lon] <= e and s <= d[PRESET.lat] <= n and start <= d[PRESET.time] <= end]


async def test_ogr2ogr_copies_a_window_of_over_10000_features_exactly(big: Served, tmp_path: Path) -> None:
    want = window_docs(big.docs)
    assert len(want) > 10_000
    out = tmp_path / "window.gpkg"
    where = (f"observationTime >= '{WINDOW[0][:10].replace('-', '/')} {WINDOW[0][11:19]}' AND "
             f"observationTime <= '{WINDOW[1][:10].replace('-', '/')} {WINDOW[1][11:19]}'")
    gdal("ogr2ogr", "-oo", "PAGE_SIZE=1000", "-f", "GPKG", str(out), f"OAPIF:{big.url}/ogc", "observations",
         "-spat", *map(str, WINDOW_BOX), "-where", where)
    with sqlite3.connect(out) as db:
        rows = db.execute("SELECT id, taxiId, passengerCount FROM observations").fetchall()
    assert len(rows) == len(want)
    assert {r[0] for r in rows} == {f"{d[PRESET.track]}:{d[PRESET.time]}" for d in want}  # each once, none else


async def test_ogrinfo_where_gives_the_direct_count(big: Served, es: AsyncElasticsearch) -> None:
    direct = (await es.count(index=big.index, query={"bool": {"filter": [
        {"term": {"passengerCount": 2}}, {"term": {"vendor_id": "VTS"}}]}}))["count"]
    assert direct > 0
    out = gdal("ogrinfo", "-ro", "-so", "-oo", "PAGE_SIZE=5000", f"OAPIF:{big.url}/ogc", "observations",
               "-where", "passengerCount = 2 AND vendor_id = 'VTS'")
    assert feature_count(out) == direct


# --- OWSLib ------------------------------------------------------------------------------------------------

async def test_owslib_collections_queryables_and_cql2_filters(big: Served, es: AsyncElasticsearch) -> None:
    from owslib.ogcapi.features import Features
    api = Features(f"{big.url}/ogc")
    ids = {c["id"] for c in api.collections()["collections"]}
    assert {"observations", "latest", "alerts", "geofences"} <= ids
    queryables = api.collection_queryables("observations")["properties"]
    assert queryables["passengerCount"]["type"] == "integer" and "geometry" in queryables
    direct_all = (await es.count(index=big.index))["count"]
    assert api.collection_items("observations", limit=1)["numberMatched"] == direct_all
    cases = [
        ({"filter": "passengerCount >= 3 AND vendor_id = 'CMT'"},
         {"bool": {"filter": [{"range": {"passengerCount": {"gte": 3}}}, {"term": {"vendor_id": "CMT"}}]}}),
        ({"filter": json.dumps({"op": "s_intersects", "args": [{"property": "geometry"},
                                                               {"bbox": [-74.0, 40.7, -73.9, 40.8]}]}),
          "filter-lang": "cql2-json"},
         {"geo_bounding_box": {"geometry": {"top_left": {"lat": 40.8, "lon": -74.0},
                                            "bottom_right": {"lat": 40.7, "lon": -73.9}}}}),
    ]
    for params, query in cases:
        direct = (await es.count(index=big.index, query=query))["count"]
        assert 0 < direct < direct_all
        assert api.collection_items("observations", limit=1, **params)["numberMatched"] == direct


# --- QGIS ----------------------------------------------------------------------------------------------------

SYSTEM_PYTHON = Path("/usr/bin/python3")


async def test_qgis_loads_the_latest_layer_with_every_track(big: Served, es: AsyncElasticsearch,
                                                           tmp_path: Path) -> None:
    import os
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("Debian's python3-qgis is not installed (make test installs it: apt-get install -y python3-qgis)")
    from geoiot.documents import latest_index
    direct = (await es.count(index=latest_index(big.index)))["count"]
    assert direct == len({d[PRESET.track] for d in big.docs})
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime))
    env.pop("PYTHONPATH", None)
    run = subprocess.run([str(SYSTEM_PYTHON), str(ROOT / "testkit" / "qgis_count.py"), f"{big.url}/ogc",
                          "latest"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    count, iterated = map(int, run.stdout.split()[-2:])
    assert count == iterated == direct
