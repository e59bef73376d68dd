"""The live mirror's column table (web.live.table) and its filter evaluation (web.live.filters): the newest
report per track wins (geoiot.live.newer), tombstones remove, rows are reused, documents come back as they were
put, the grid finds what a scan finds, and every ``where`` filter selects what a direct reading of its meaning
(web.params) over the documents selects."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from hypothesis import given, settings as hsettings, strategies as st

from geoiot import live
from geoiot.documents import GEOFENCES, SPEED, field_types
from geoiot.schema import load_preset
from testkit import live as live_kit
from testkit.observations import document, on_grid
from web import params, where
from web.live import answers
from web.live.filters import bbox_mask, mask, newest_in_view, select
from web.live.table import Grid, LiveTable, apply_records

PRESET = load_preset("taxi")
FIELDS = field_types(PRESET)
T0 = 1_357_000_000_000


def doc(track: str, t: int, lon: float = -73.9, lat: float = 40.7, fences: tuple[str, ...] = (),
        **attrs: Any) -> dict[str, Any]:
    d = document(PRESET, track, t, *on_grid(lon, lat), list(fences), speed=1.5)
    d.update(attrs)
    return d


def test_newest_report_wins_and_equal_times_take_the_later_record() -> None:
    table = LiveTable(PRESET)
    assert live_kit.apply(table, "a", doc("a", T0 + 10, vendor_id="VTS"))
    assert not live_kit.apply(table, "a", doc("a", T0 + 5, vendor_id="OLD"))  # older: ignored
    assert live_kit.snapshot(table)["a"]["vendor_id"] == "VTS"
    assert live_kit.apply(table, "a", doc("a", T0 + 10, vendor_id="CMT"))  # equal time: the one read last
    assert live_kit.snapshot(table)["a"]["vendor_id"] == "CMT"


def test_tombstones_remove_and_rows_are_reused() -> None:
    table = LiveTable(PRESET, capacity=2)
    for i in range(5):
        live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + i))
    capacity = table.capacity
    assert live_kit.apply(table, "t1", None) and not live_kit.apply(table, "t1", None) and "t1" not in live_kit.snapshot(table)
    live_kit.apply(table, "t9", doc("t9", T0))
    assert table.capacity == capacity and len(table) == 5


def test_documents_come_back_as_they_were_put() -> None:
    rng = random.Random(3)
    table = LiveTable(PRESET)
    docs = {}
    for i in range(300):
        d = doc(f"cab-{i}", T0 + rng.randrange(10**6), rng.uniform(-74, -73.7), rng.uniform(40.6, 40.9),
                tuple(sorted(rng.sample(["jfk", "lga", "mid"], rng.randrange(0, 3)))),
                passengerCount=rng.randrange(1, 6), vendor_id=rng.choice(["VTS", "CMT", None]),
                tripDistance=rng.choice([None, rng.uniform(0, 20)]))
        if i % 7 == 0:
            d["unknown_field"] = {"nested": i}  # outside the preset: kept aside, given back
        docs[d[PRESET.track]] = d
    applied, skipped = apply_records(table, [(live.key(t), live.value(d)) for t, d in docs.items()]
                                     + [(None, b"{}"), (b"x", b"[1]")], PRESET.time)
    assert (applied, skipped) == (300, 2)
    assert live_kit.snapshot(table) == docs


def views(rng: random.Random) -> params.BBox:
    lon, lat = rng.uniform(-180, 180), rng.uniform(-89, 89)
    w, h = rng.choice([0.05, 0.5, 5, 90]), rng.choice([0.05, 0.5, 5, 60])
    max_lon = lon + w if lon + w <= 180 else lon + w - 360
    return params.BBox(lon, lat, max_lon, min(90.0, lat + h))


def test_grid_finds_what_a_scan_finds() -> None:
    rng = random.Random(5)
    table = LiveTable(PRESET)
    for i in range(20_000):
        live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + i, rng.uniform(-180, 179.99), rng.uniform(-89.9, 89.9)))
    table.grid.rebuild(table.lon, table.lat, table.time, table.alive)
    for i in range(0, 20_000, 3):  # moved since the grid was sorted
        live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + 10**6 + i, rng.uniform(-180, 179.99), rng.uniform(-89.9, 89.9)))
    for i in range(0, 20_000, 11):
        live_kit.apply(table, f"t{i}", None)
    everything = table.all_rows()
    for _ in range(200):
        box = views(rng)
        via_grid = select(table, box)
        scanned = everything[mask(table, params.InBox(box), everything)]
        assert sorted(via_grid.tolist()) == sorted(scanned.tolist())


# A direct reading of the filters' meaning (web.params), one document at a time.
def passes(d: dict[str, Any], f: params.Filter) -> bool:
    value = d.get(f.field)  # type: ignore[union-attr]
    values = value if isinstance(value, list) else [value]
    values = [v for v in values if v is not None]
    if isinstance(f, params.OneOf):
        return any(v == w and type(v) is not bool or (type(v) is bool and v is w) for v in values for w in f.values)
    return any((f.low is None or (v >= f.low if f.include_low else v > f.low))
               and (f.high is None or (v <= f.high if f.include_high else v < f.high)) for v in values)


WHERE_TEXTS = st.one_of(
    st.sampled_from(["VTS", "CMT", "VTS|CMT", "DDS"]).map(lambda v: f"vendor_id:{v}"),
    st.sampled_from(["jfk", "lga", "jfk|mid", "none"]).map(lambda v: f"{GEOFENCES}:{v}"),
    st.tuples(st.sampled_from([">", ">=", "<", "<="]), st.integers(0, 7)).map(lambda o: f"passengerCount:{o[0]}{o[1]}"),
    st.tuples(st.integers(0, 5), st.integers(5, 9)).map(lambda r: f"passengerCount:{r[0]}..{r[1]}"),
    st.integers(1, 5).map(lambda v: f"passengerCount:{v}|{v + 1}"),
    st.tuples(st.floats(0, 20), st.sampled_from([">", "<="])).map(lambda o: f"tripDistance:{o[1]}{o[0]:.3f}"),
    st.integers(0, 10**6).map(lambda v: f"{PRESET.time}:>={T0 + v}"),
    st.integers(0, 10**6).map(lambda v: f"{PRESET.time}:..{T0 + v}"),
    st.sampled_from(["Y", "N"]).map(lambda v: f"store_and_fwd_flag:{v}"),
    st.floats(0, 3).map(lambda v: f"{SPEED}:>={v:.2f}"),
)


def _table(seed: int) -> tuple[LiveTable, dict[str, dict[str, Any]]]:
    rng = random.Random(seed)
    table, docs = LiveTable(PRESET), {}
    for i in range(400):
        d = doc(f"cab-{i}", T0 + rng.randrange(10**6), rng.uniform(-74, -73.7), rng.uniform(40.6, 40.9),
                tuple(sorted(rng.sample(["jfk", "lga", "mid"], rng.randrange(0, 3)))),
                passengerCount=rng.choice([None, *range(0, 8)]), vendor_id=rng.choice(["VTS", "CMT", None]),
                tripDistance=rng.choice([None, rng.uniform(0, 20)]), store_and_fwd_flag=rng.choice(["Y", "N", None]))
        d[SPEED] = rng.choice([None, rng.uniform(0, 3)])
        live_kit.apply(table, d[PRESET.track], d)
        docs[d[PRESET.track]] = d
    return table, docs


TABLE, DOCS = _table(11)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(WHERE_TEXTS, min_size=1, max_size=3))
def test_where_filters_select_what_their_meaning_says(texts: list[str]) -> None:
    filters = where.parse_where(texts, FIELDS)
    got = {TABLE.tracks[r] for r in select(TABLE, params.WORLD, filters).tolist()}
    want = {t for t, d in DOCS.items() if all(passes(d, f) for f in filters)}
    assert got == want


@hsettings(max_examples=100, deadline=None)
@given(st.lists(WHERE_TEXTS, min_size=1, max_size=2))
def test_negation_is_the_complement(texts: list[str]) -> None:
    filters = where.parse_where(texts, FIELDS)
    rows = TABLE.all_rows()
    both = mask(TABLE, params.AllOf(filters), rows)
    assert np.array_equal(mask(TABLE, params.Negation(params.AllOf(filters)), rows), ~both)


def test_latest_is_newest_first_limited_and_counts_all() -> None:
    p = params.LatestParams(params.parse_bbox("-74,40.6,-73.8,40.8"), 25)
    total, features = answers.latest(TABLE, p)
    inside = [d for d in DOCS.values() if -74 <= d[PRESET.lon] <= -73.8 and 40.6 <= d[PRESET.lat] <= 40.8]
    assert total == len(inside) > 25
    times = sorted((d[PRESET.time] for d in inside), reverse=True)[:25]
    assert [f["properties"]["time"] for f in features] == times


def test_retention_cutoff_hides_older_tracks() -> None:
    cutoff = T0 + 500_000
    total, _ = answers.latest(TABLE, params.LatestParams(params.WORLD, 10), cutoff)
    assert total == sum(d[PRESET.time] >= cutoff for d in DOCS.values())


def test_the_latest_payload_is_the_latest_answer_serialised_also_after_rows_change() -> None:
    import orjson

    table, docs = _table(12)
    p = params.LatestParams(params.parse_bbox("-74,40.6,-73.8,40.8"), 40, where.parse_where(["vendor_id:VTS|CMT"], FIELDS))
    for step in range(3):
        total, features = answers.latest(table, p)
        assert answers.latest_payload(table, p) == orjson.dumps({"type": "FeatureCollection", "total": total,
                                                                  "features": features})
        for track in list(docs)[step::3]:  # a third of the tracks report again, one leaves
            live_kit.apply(table, track, dict(docs[track], observationTime=docs[track][PRESET.time] + 10**7 * (step + 1),
                                    vendor_id="CMT"))
        live_kit.apply(table, list(docs)[step], None)


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.integers(0, 5))), max_size=12),
       st.integers(1, 5))
def test_a_batch_applies_as_its_records_one_by_one(records: list[tuple[str, int | None]], size: int) -> None:
    one, batched = LiveTable(PRESET), LiveTable(PRESET)
    seq = [(t, None if v is None else doc(t, T0 + v, vendor_id=f"{t}{k}")) for k, (t, v) in enumerate(records)]
    for t, d in seq:
        live_kit.apply(one, t, d)
    for start in range(0, len(seq), size):
        part = seq[start:start + size]
        batched.apply_batch([t for t, _ in part], [d for _, d in part])
    assert live_kit.snapshot(one) == live_kit.snapshot(batched)


def scanned(table: LiveTable, p: params.LatestParams, cutoff: int | None) -> tuple[int, list[int]]:
    """The plain answer: every live row checked, newest first (equal times: the higher row first)."""
    rows = table.all_rows()
    keep = bbox_mask(table, p.bbox, rows)
    for f in p.where:
        keep &= mask(table, f, rows)
    found = [r for r in rows[keep].tolist() if cutoff is None or table.time[r] >= cutoff]
    return len(found), sorted(found, key=lambda r: (int(table.time[r]), r), reverse=True)[:p.limit]


BOXES = st.one_of(
    st.just(params.WORLD),
    st.tuples(st.floats(-74.2, -73.6), st.floats(40.4, 41.0), st.sampled_from([0.001, 0.02, 0.05, 0.3, 1.0, 3.0]),
              st.sampled_from([0.001, 0.02, 0.05, 0.3, 1.0, 8.0])).map(
        lambda b: params.BBox(b[0], b[1], b[0] + b[2], min(90.0, b[1] + b[3]))),
    st.tuples(st.floats(179.0, 180.0), st.floats(-180.0, -179.0)).map(lambda b: params.BBox(b[0], -1.0, b[1], 1.0)),
)


@hsettings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 3000), spread=st.sampled_from([1, 50, 10**6]),
       box=BOXES, limit=st.integers(1, 1500), changed=st.sampled_from([0.0, 0.05, 0.5]),
       removed=st.sampled_from([0.0, 0.1]), cutoff=st.one_of(st.none(), st.integers(0, 10**6)),
       texts=st.one_of(st.just([]), st.lists(WHERE_TEXTS, min_size=1, max_size=2)))
def test_the_fast_latest_answer_is_the_plain_scan(seed: int, n: int, spread: int, box: params.BBox, limit: int,
                                                  changed: float, removed: float, cutoff: int | None,
                                                  texts: list[str]) -> None:
    """newest_rows (the grid's counts and the newest-first order where cheaper) equals checking every row, also
    with rows changed or removed since the grid was sorted, ties in time, the antimeridian and the world."""
    rng = random.Random(seed)
    table = LiveTable(PRESET)

    def place() -> tuple[float, float]:
        if rng.random() < 0.1:
            return rng.uniform(179.5, 180.0) if rng.random() < 0.5 else rng.uniform(-180.0, -179.5), rng.uniform(-1, 1)
        return rng.uniform(-74.1, -73.7), rng.uniform(40.5, 40.9)

    for i in range(n):
        live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + rng.randrange(spread), *place(), vendor_id=rng.choice(["VTS", "CMT"]),
                                 passengerCount=rng.randrange(0, 7)))
    table.refresh_grid(now=float("inf"))
    for i in range(n):
        r = rng.random()
        if r < changed:
            live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + spread + rng.randrange(spread), *place(), vendor_id="VTS"))
        elif r < changed + removed:
            live_kit.apply(table, f"t{i}", None)
    if rng.random() < 0.3:
        live_kit.apply(table, "new", doc("new", T0 + rng.randrange(2 * spread), *place()))
    if rng.random() < 0.5:  # the grid merges these changes into its orders; then more change
        table.refresh_grid(now=float("inf"))
        for i in rng.sample(range(n), min(n, 5)):
            live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + rng.randrange(2 * spread), *place()))
    p = params.LatestParams(box, limit, where.parse_where(texts, FIELDS))
    cut = None if cutoff is None else T0 + cutoff % (2 * spread)
    want = scanned(table, p, cut)
    total, rows = answers.newest_rows(table, p, cut)
    assert (total, rows.tolist()) == want
    fast = newest_in_view(table, box, limit, cut)
    if fast is not None and not p.where:
        assert (fast[0], fast[1].tolist()) == want


def test_a_city_view_holding_most_tracks_takes_the_fast_path() -> None:
    """The property above exercises newest_in_view: a view holding most tracks answers through it."""
    table = LiveTable(PRESET)
    rng = random.Random(1)
    for i in range(5000):
        live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + rng.randrange(10**6), rng.uniform(-74.0, -73.8), rng.uniform(40.6, 40.8)))
    box = params.parse_bbox("-74.05,40.55,-73.75,40.85")
    fast = newest_in_view(table, box, 100)
    assert fast is not None and fast[0] == 5000
    assert (fast[0], fast[1].tolist()) == scanned(table, params.LatestParams(box, 100), None)


@hsettings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 2000), spread=st.sampled_from([1, 20, 10**6]),
       changed=st.sampled_from([0.0, 0.01, 0.2]))
def test_merging_changes_into_the_grid_gives_the_orders_of_a_full_sort(seed: int, n: int, spread: int,
                                                                       changed: float) -> None:
    rng = random.Random(seed)
    table = LiveTable(PRESET)
    place = lambda: (rng.uniform(-74.1, -73.7), rng.uniform(40.5, 40.9))  # noqa: E731
    for i in range(n):
        live_kit.apply(table, f"t{i}", doc(f"t{i}", T0 + rng.randrange(spread), *place()))
    table.refresh_grid(now=float("inf"))
    for i in range(n):
        if rng.random() < changed:
            live_kit.apply(table, f"t{i}", None if rng.random() < 0.3 else doc(f"t{i}", T0 + rng.randrange(2 * spread), *place()))
    for i in range(rng.randrange(3)):
        live_kit.apply(table, f"new{i}", doc(f"new{i}", T0 + rng.randrange(2 * spread), *place()))
    table.refresh_grid(now=float("inf"))
    merged = table.grid
    full = Grid()
    full.grow(table.capacity)
    full.rebuild(table.lon, table.lat, table.time, table.alive)
    assert merged.newest.tolist() == full.newest.tolist()
    assert merged.newest_time.tolist() == full.newest_time.tolist()
    assert merged.cells.tolist() == full.cells.tolist()
    assert sorted(zip(merged.cells.tolist(), merged.order.tolist())) == sorted(zip(full.cells.tolist(), full.order.tolist()))
    assert merged.row_cell.tolist() == full.row_cell.tolist()


def test_views_selecting_the_same_rows_share_one_answer_until_the_table_changes() -> None:
    import orjson

    table, docs = _table(12)
    view = params.LatestParams(params.parse_bbox("-74,40.6,-73.8,40.8"), 40)
    nudged = params.LatestParams(params.parse_bbox("-74.000001,40.6,-73.8,40.800001"), 40)
    first = answers.latest_payload(table, view)
    assert answers.newest_rows(table, view)[1].tolist() == answers.newest_rows(table, nudged)[1].tolist()
    assert answers.latest_payload(table, nudged) is first  # the same bytes object: the compression memo knows it
    track = next(iter(docs))
    live_kit.apply(table, track, dict(docs[track], observationTime=docs[track][PRESET.time] + 10**9))
    after = answers.latest_payload(table, nudged)
    total, features = answers.latest(table, nudged)
    assert after is not first and after == orjson.dumps({"type": "FeatureCollection", "total": total,
                                                          "features": features})


def test_the_answer_memo_is_bounded_and_per_version() -> None:
    from web.live.table import AnswerMemo

    memo = AnswerMemo(max_bytes=100)
    memo.put(1, "a", b"x" * 60)
    memo.put(1, "b", b"y" * 30)
    assert memo.get(1, "a") == b"x" * 60 and memo.held == 90
    memo.put(1, "c", b"z" * 30)  # over the bound: the oldest goes
    assert memo.get(1, "a") is None and memo.get(1, "c") == b"z" * 30 and memo.held == 60
    assert memo.get(2, "c") is None  # another version of the table knows nothing of these
    memo.put(2, "d", b"w" * 10)
    assert memo.get(1, "c") is None and memo.held == 10
    memo.put(2, "e", b"v" * 101)  # larger than the bound: never held
    assert memo.get(2, "e") is None and memo.held == 10
