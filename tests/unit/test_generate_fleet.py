"""Unit tests of the generator's fleet mode (``python -m replay generate --reports``): the scale data set.

Many tracks, a few reports each, streamed block by block: the same arguments give the same bytes whatever the
block size, every track reports ``reports`` times ``interval`` seconds apart, rows are in time order, and the
first block of an enormous fleet comes without computing the rest (memory bounded by the block, not the fleet).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from shapely.geometry import Point, shape

from geoiot.config import DEFAULT_GEOFENCES
from geoiot.schema import load_preset
from replay.cli import main
from replay.generate import JFK_STEP_M, MAX_SPEED, NYC_BBOX, iter_fleet_blocks, write_fleet_csv
from replay.reader import Rejected, read_records

TAXI = load_preset("taxi")


def text(*args: object, **kwargs: object) -> str:
    return "".join(block for _, block in iter_fleet_blocks(*args, **kwargs))  # type: ignore[arg-type]


def records(path: Path) -> list[dict]:
    out = [r for _, r in read_records(path, TAXI)]
    assert not any(isinstance(r, Rejected) for r in out)
    return out


@settings(max_examples=40, deadline=None)
@given(tracks=st.integers(0, 200), reports=st.integers(0, 4), interval=st.integers(1, 90), block=st.integers(1, 40),
       seed=st.integers(-5, 5))
def test_fleet_rows_are_counted_time_ordered_and_independent_of_the_block_size(
        tracks: int, reports: int, interval: int, block: int, seed: int) -> None:
    blocks = list(iter_fleet_blocks(tracks, reports, seed, interval=interval, block=block))
    rows = "".join(b for _, b in blocks).splitlines()
    assert sum(n for n, _ in blocks) == len(rows) == tracks * reports
    assert all(n <= block for n, _ in blocks)
    assert "".join(b for _, b in blocks) == text(tracks, reports, seed, interval=interval)
    keys = [(line.split(",")[1], int(line.split(",")[0])) for line in rows]
    assert keys == sorted(keys), "time-major, then track id"


def test_fleet_file_is_byte_identical_for_a_seed_and_gzip_holds_the_same(tmp_path: Path) -> None:
    assert write_fleet_csv(tmp_path / "a.csv", 500, 3, seed=4) == 1500
    write_fleet_csv(tmp_path / "b.csv.gz", 500, 3, seed=4)
    write_fleet_csv(tmp_path / "c.csv.gz", 500, 3, seed=4)
    write_fleet_csv(tmp_path / "d.csv", 500, 3, seed=5)
    assert (tmp_path / "b.csv.gz").read_bytes() == (tmp_path / "c.csv.gz").read_bytes()
    assert gzip.decompress((tmp_path / "b.csv.gz").read_bytes()) == (tmp_path / "a.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "d.csv").read_bytes()


def test_each_track_reports_every_interval_along_a_plausible_path(tmp_path: Path) -> None:
    tracks, reports, interval = 900, 4, 30
    write_fleet_csv(tmp_path / "f.csv", tracks, reports, seed=1, interval=interval)
    by_track: dict[str, list[dict]] = defaultdict(list)
    for r in records(tmp_path / "f.csv"):
        by_track[r["taxiId"]].append(r)
    assert sorted(by_track, key=int) == [str(i) for i in range(tracks)]
    per_second = defaultdict(int)
    for track, rows in by_track.items():
        assert [r["observationIx"] for r in rows] == list(range(1, reports + 1))
        assert rows[0]["observationTime"] == 1_356_998_400_000 + (int(track) % interval) * 1000
        assert all(b["observationTime"] - a["observationTime"] == interval * 1000 for a, b in zip(rows, rows[1:]))
        for a, b in zip(rows, rows[1:]):
            dx = (b["longitude"] - a["longitude"]) * 111_320 * math.cos(math.radians(a["latitude"]))
            dy = (b["latitude"] - a["latitude"]) * 111_320
            assert math.hypot(dx, dy) <= max(MAX_SPEED * interval, JFK_STEP_M) * 1.05
        assert all(NYC_BBOX[0] <= r["longitude"] <= NYC_BBOX[2] and NYC_BBOX[1] <= r["latitude"] <= NYC_BBOX[3]
                   for r in rows)
        first, last = rows[0], rows[-1]
        assert {(r["pickup_longitude"], r["pickup_latitude"], r["dropoff_longitude"], r["dropoff_latitude"],
                 r["pickup_datetime"], r["dropoff_datetime"], r["medallion"]) for r in rows} == \
               {(first["longitude"], first["latitude"], last["longitude"], last["latitude"],
                 first["observationTime"], last["observationTime"], first["medallion"])}
        per_second[first["observationTime"]] += 1
    assert set(per_second.values()) == {tracks // interval}, "first reports spread evenly over one interval"
    ids = {r[0][k] for r in by_track.values() for k in ("medallion", "hack_license")}
    assert len(ids) == 2 * tracks and all(len(i) == 32 for i in ids), "every track its own hex ids"


def test_a_share_of_the_fleet_crosses_the_jfk_fence_out_in_out(tmp_path: Path) -> None:
    fence = shape(json.loads(DEFAULT_GEOFENCES.read_text())["features"][0]["geometry"])
    write_fleet_csv(tmp_path / "f.csv", 400, 3, seed=2, jfk_share=0.5)
    by_track: dict[str, list[bool]] = defaultdict(list)
    rate: dict[str, int] = {}
    for r in records(tmp_path / "f.csv"):
        by_track[r["taxiId"]].append(fence.contains(Point(r["longitude"], r["latitude"])))
        rate[r["taxiId"]] = r["rate_code"]
    crossing = [t for t, inside in by_track.items() if inside == [False, True, False]]
    assert 150 <= len(crossing) <= 250 and all(rate[t] == 2 for t in crossing)
    assert sum(any(v) for v in by_track.values()) < len(crossing) * 1.1, "the others rarely touch it"


def test_the_first_block_of_a_huge_fleet_needs_only_that_block() -> None:
    """Bounded memory by construction: rows come from (seed, track, report) alone, block by block, so a
    trillion-track fleet yields its first rows without holding (or computing) the other tracks."""
    blocks = iter_fleet_blocks(10**12, 3, 7, block=100)
    rows, first = next(blocks)
    lines = first.splitlines()
    assert rows == len(lines) == 100
    assert [int(line.split(",")[0]) for line in lines] == list(range(0, 6000, 60))
    assert first == "".join(b for _, b in itertools.islice(iter_fleet_blocks(10**4, 3, 7, block=100), 1))


def test_fleet_cli_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fleet.csv"
    assert main(["generate", "--tracks", "7", "--reports", "3", "--interval", "2", "--seed", "1", "--out", str(out)]) == 0
    assert out.read_text() == text(7, 3, 1, interval=2)
    for bad in (["--points", "2", "--reports", "3"], ["--reports", "3", "--interval", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--tracks", "3", "--out", str(out), *bad])
        assert exc.value.code == 2
    assert "interval" in capsys.readouterr().err
