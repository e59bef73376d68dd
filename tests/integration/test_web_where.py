"""``where`` attribute filters (issue 14, item 2) against the real Elasticsearch, with a user's own preset
that has a field of every type (string, int, float, bool, time) beside the document model's derived ones.

Every expected answer is a direct count over the generated documents with plain comparisons.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch

from geoiot import documents
from geoiot.config import Settings
from geoiot.schema import load_preset
from testkit.observations import indexed, walk
from web import openapi
from web.app import init_app

pytestmark = pytest.mark.integration

PRESET_TOML = """
name = "probe"
track = "id"
time = "t"
lon = "x"
lat = "y"
[fields]
id = "string"
t = "time"
x = "float"
y = "float"
kind = "string"
level = "int"
depth = "float"
ok = "bool"
seen = "time"
"""
T0 = 1_357_000_000_000
N = 1_200
FENCE_BOX = (-73.95, 40.65, -73.85, 40.80)
Doc = dict[str, Any]


@dataclasses.dataclass
class Data:
    docs: list[Doc]
    settings: Settings


def make_docs(preset: Any) -> list[Doc]:
    rng = random.Random(14)
    docs = list(walk(preset, N, tracks=12, start_ms=T0, step_ms=7_000, seed=14, fence=("zone-a", FENCE_BOX)))
    for d in docs:
        d["kind"] = rng.choice(["a", "b", "c", "a b|c", None])
        d["level"] = rng.choice([None, *range(10)])
        d["depth"] = round(rng.uniform(0, 20), 3)
        d["ok"] = rng.random() < 0.4
        d["seen"] = d["t"] - rng.randrange(0, 3_600_000, 1000)
    return docs


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Data]:
    path: Path = tmp_path_factory.mktemp("preset") / "probe.toml"
    path.write_text(PRESET_TOML)
    preset = load_preset(str(path))
    name = f"webwhere-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(stack, iot_index=name, iot_schema=str(path))
    docs = make_docs(preset)
    async with indexed(es, settings, preset, docs):
        yield Data(docs, settings)


@pytest_asyncio.fixture(loop_scope="session")
async def client(data: Data) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(init_app(data.settings, consume_alerts=False))) as c:
        yield c


async def get_json(client: TestClient, path: str, query: list[tuple[str, str]], status: int = 200) -> Any:
    resp = await client.get(path, params=query)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    return body


def at(docs: list[Doc], i: int, name: str) -> Any:
    return docs[i][name]


# (where parameters, predicate over a document): one case per field type and operator at least.
Case = tuple[list[str], Callable[[Doc], bool]]


def cases(docs: list[Doc]) -> list[Case]:
    depth, seen, t = docs[77]["depth"], docs[300]["seen"], docs[500]["t"]
    lo_seen, hi_seen = sorted((docs[100]["seen"], docs[900]["seen"]))
    speed = sorted(d[documents.SPEED] for d in docs)[N // 2]
    return [
        (["kind:a"], lambda d: d["kind"] == "a"),
        (["kind:a|c"], lambda d: d["kind"] in ("a", "c")),
        (["kind:a b"], lambda d: False),  # "a b|c" is one value: | splits, nothing else does
        (["level:3"], lambda d: d["level"] == 3),
        (["level:1|5|9"], lambda d: d["level"] in (1, 5, 9)),
        (["level:>=7"], lambda d: d["level"] is not None and d["level"] >= 7),
        (["level:>7"], lambda d: d["level"] is not None and d["level"] > 7),
        (["level:2..4"], lambda d: d["level"] is not None and 2 <= d["level"] <= 4),
        ([f"depth:{depth!r}"], lambda d: d["depth"] == depth),
        (["depth:<10.5"], lambda d: d["depth"] < 10.5),
        (["depth:2.5..7.25"], lambda d: 2.5 <= d["depth"] <= 7.25),
        (["depth:15.."], lambda d: d["depth"] >= 15),
        (["ok:true"], lambda d: d["ok"] is True),
        (["ok:false|true"], lambda d: True),
        ([f"seen:{seen}"], lambda d: d["seen"] == seen),
        ([f"seen:{lo_seen}..{hi_seen}"], lambda d: lo_seen <= d["seen"] <= hi_seen),
        (["seen:<2013-01-01T00:30:00Z"], lambda d: d["seen"] < 1_357_000_200_000),
        ([f"t:{t}"], lambda d: d["t"] == t),
        ([f"{documents.SPEED}:>={speed!r}"], lambda d: d[documents.SPEED] >= speed),
        ([f"{documents.GEOFENCES}:zone-a"], lambda d: "zone-a" in d[documents.GEOFENCES]),
        (["kind:a", "level:>=3", "ok:false"], lambda d: d["kind"] == "a" and (d["level"] or -1) >= 3 and not d["ok"]),
        ([f"{documents.GEOFENCES}:zone-a|elsewhere", "depth:..10"],
         lambda d: "zone-a" in d[documents.GEOFENCES] and d["depth"] <= 10),
    ]


async def test_every_field_type_filters_to_the_direct_count(client: TestClient, data: Data) -> None:
    docs = data.docs
    track = docs[5]["id"]
    for where, keep in cases(docs):
        expected = [d for d in docs if keep(d)]
        query = [("where", w) for w in where]
        agg = await get_json(client, "/api/aggregate", [("precision", "2"), *query])
        assert agg["total"] == len(expected), where
        assert sum(f["properties"]["count"] for f in agg["features"]) == len(expected), where
        obs = await get_json(client, "/api/observations", [("limit", "10000"), *query])
        assert obs["total"] == len(expected) and len(obs["features"]) == len(expected), where
        assert {f["id"] for f in obs["features"]} == {documents.doc_id(d["id"], d["t"]) for d in expected}, where
        mine = [d["t"] for d in expected if d["id"] == track]
        resp = await client.get(f"/api/tracks/{track}", params=query)
        if mine:
            assert resp.status == 200
            assert (await resp.json())["properties"]["times"] == mine, where
        else:
            assert resp.status == 404, where
    # the cases are not trivial: each keeps some and drops some (but the two that test exactly that)
    sizes = [sum(map(keep, docs)) for _, keep in cases(docs)]
    assert sum(0 < s < N for s in sizes) >= len(sizes) - 2


BAD = [
    (["nope:1"], "nope"), (["level:x"], "level"), (["level:1.5"], "level"), (["depth:deep"], "depth"),
    (["ok:yes"], "ok"), (["seen:tomorrow"], "seen"), (["kind:>=a"], "kind"), (["depth:9..1"], "depth"),
    (["level:"], "level:"), (["level:1||2"], "level"), (["kind:a", "geometry:1"], "geometry"), (["=3"], "=3"),
    (["level:" + "9" * 20], "level"), (["kind:a"] * 17, "at most 16"), (["ok:true|"], "ok"),
]


@pytest.mark.parametrize("where, named", BAD)
@pytest.mark.parametrize("path", ["/api/aggregate", "/api/observations", "/api/tracks/track-0001", "/api/latest",
                                  "/api/events"])
async def test_malformed_where_is_400_naming_it(client: TestClient, path: str, where: list[str], named: str) -> None:
    body = await get_json(client, path, [("where", w) for w in where], 400)
    jsonschema.validate(body, openapi.document()["components"]["schemas"]["Error"])
    assert named in body["error"]


async def test_the_cache_keeps_filtered_answers_apart(client: TestClient, data: Data) -> None:
    a = await get_json(client, "/api/aggregate", [("precision", "3"), ("where", "kind:a")])
    b = await get_json(client, "/api/aggregate", [("precision", "3"), ("where", "kind:b")])
    everything = await get_json(client, "/api/aggregate", [("precision", "3")])
    assert a["total"] == sum(d["kind"] == "a" for d in data.docs)
    assert b["total"] == sum(d["kind"] == "b" for d in data.docs)
    assert everything["total"] == N


async def test_config_lists_the_filterable_fields(client: TestClient) -> None:
    resp = await client.get("/api/config")
    fields = (await resp.json())["fields"]
    assert fields["ok"] == "bool" and fields["seen"] == "time" and fields[documents.SPEED] == "float"
    assert documents.GEOMETRY not in fields
