"""Pure rules of issue 22, items 7 and 9: one boundary for retention and the event-age refusal, the replay's
kind for it, non-core attributes no document can hold, and the Kafka key that is not the track id."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.core.validate import decode, decode_batch
from agents.store.retention import expired
from geoiot import config, documents
from geoiot.config import DEFAULT_GEOFENCES
from geoiot.schema import InvalidRecord, load_preset
from geoiot.timeparse import EventTimeBounds
from replay.summary import reason_kind

PRESET = load_preset("taxi")
CORE = (PRESET.track, PRESET.time, PRESET.lon, PRESET.lat)
HOUR = 3_600_000
NOON = int(datetime(2026, 12, 4, 12, tzinfo=timezone.utc).timestamp() * 1000)


def test_an_event_25_hours_old_with_one_day_of_retention_is_kept_like_its_day():
    """Before: refused as older than 1 day while retention kept its whole day until midnight."""
    bounds = EventTimeBounds.from_settings(config.load({"IOT_RETENTION_DAYS": "1"}))
    t = NOON - 25 * HOUR
    assert bounds.problem(t, NOON) is None
    assert expired("x", [documents.index_for("x", t)], 1, NOON) == []
    old = NOON - 37 * HOUR  # the day before yesterday, 23:00: deleted now, refused now
    assert expired("x", [documents.index_for("x", old)], 1, NOON) == [documents.index_for("x", old)]
    assert "IOT_RETENTION_DAYS=1" in bounds.problem(old, NOON)


@given(days=st.integers(1, 4000), now=st.integers(10**12, 4 * 10**12), age=st.integers(-10**9, 5000 * 86_400_000))
def test_an_event_is_refused_exactly_when_retention_deletes_its_day(days, now, age):
    t = now - age
    bounds = EventTimeBounds(max_age_days=36525 * 10, max_ahead_days=1, retention_days=days)
    refused = bounds.problem(t, now) is not None
    deleted = expired("x", [documents.index_for("x", t)], days, now) != []
    assert refused == deleted or t > now + 86_400_000


def test_replay_reports_an_event_time_refusal_under_the_kind_bounds():
    """Before: the kind `other`, which the README does not list."""
    bounds = EventTimeBounds(max_age_days=10, max_ahead_days=1, retention_days=1)
    for t in (NOON - 37 * HOUR, NOON - 20 * 86_400_000, NOON + 3 * 86_400_000):
        assert reason_kind(bounds.problem(t, NOON), CORE) == "bounds"
    assert reason_kind("observationTime: time 'soon' is not ISO 8601 or epoch", CORE) == "time"


BASE = {"taxiId": "a", "observationTime": 1357000000000, "longitude": -73.9, "latitude": 40.7}


def raw(**extra: str) -> bytes:
    """The base event with fields written as raw JSON text (what orjson cannot read: 1e400, lone surrogates)."""
    body = orjson.dumps(BASE)[:-1]
    return body + b"".join(f',"{k}":{v}'.encode() for k, v in extra.items()) + b"}"


def test_non_core_attributes_no_document_can_hold_are_nulled_and_counted():
    """Before: the whole event was a dead letter ("not JSON")."""
    for extra, name in ((dict(tripDistance="1e400"), "tripDistance"), (dict(passengerCount="-1e400"), "passengerCount"),
                        (dict(vendor_id='"\\ud800x"'), "vendor_id"), (dict(medallion="1e400"), "medallion")):
        obs = decode(PRESET, raw(**extra))
        assert obs.nulled == (name,) and obs.record[name] is None and obs.track == "a"
        orjson.dumps(obs.record)  # storable
        batch = decode_batch(PRESET, [raw(**extra), orjson.dumps(BASE)])
        assert batch.reasons == {} and batch.nulled == {0: 1} and batch.positions == [0, 1]


def test_core_fields_no_document_can_hold_still_make_the_event_invalid():
    for value, words in ((raw(taxiId='"\\udc00"'), "taxiId is not valid Unicode"),
                         (orjson.dumps(BASE)[:-1].replace(b"-73.9", b"1e400") + b"}", "longitude"),
                         (b'{"taxiId":"a","observationTime":1e400,"longitude":1,"latitude":2}', "not finite"),
                         (b'{"taxiId":"a","observationTime":NaN,"longitude":1,"latitude":2}', "not JSON")):
        try:
            decode(PRESET, value)
        except InvalidRecord as exc:
            assert words in exc.reason, exc.reason
        else:
            raise AssertionError(f"accepted {value!r}")


def test_a_kafka_key_that_is_not_the_track_id_is_counted_and_the_value_wins():
    pipeline = Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), "x")
    messages = [Incoming(orjson.dumps({**BASE, "taxiId": track, "observationTime": BASE["observationTime"] + i}), key,
                         "t", 0, i)
                for i, (track, key) in enumerate([("a", b"a"), ("b", b"not-b"), ("c", None), ("d", b"d "),
                                                  ("", b"e")])]
    result = pipeline.process(messages, lambda track: None)
    assert result.key_mismatch == 2  # b and d; no key is not a mismatch; the invalid event is a dead letter
    assert len(result.dead) == 1
    assert sorted(a["_source"]["taxiId"] for a in result.observations.actions()) == ["a", "b", "c", "d"]
