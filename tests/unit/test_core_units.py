"""Fast unit tests of the shared core: configuration, schema presets, time parsing, malloc settings."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoiot import config, malloc
from geoiot.schema import InvalidRecord, SchemaError, coerce, load_preset, parse_row, typed_record
from geoiot.timeparse import TimeParseError, parse_time, zone

TAXI_ROW = ("0,2013-01-01 00:00:01,-73.968073,40.765454,1,1,6.21,1,A020A87D917A0AFB526A1F01597INEEJ,"
            "034AA953F43243D2CDC8535DB0JI4VN4,VTS,2,,2013-01-01 00:00:00,2013-01-01 00:15:00,"
            "-73.98028135299683,40.76534770942323,-73.9798789669999,40.752608546").split(",")


# --- configuration ------------------------------------------------------------------------------

def test_defaults_match_the_documented_ones() -> None:
    s = config.load({})
    assert (s.kafka_bootstrap, s.es_url, s.iot_topic, s.iot_index) == ("localhost:9092", "http://localhost:9200", "taxi", "taxi")
    assert (s.iot_dlq_topic, s.iot_alerts_topic, s.web_port, s.iot_webhook_url) == ("taxi-dlq", "taxi-alerts", 8080, "")


def test_environment_is_typed_and_flags_override_it() -> None:
    env = {"WEB_PORT": "9999", "IOT_GEOFENCE_FILTER": "true", "KAFKA_BOOTSTRAP": "k:1"}
    parser = argparse.ArgumentParser()
    config.add_flags(parser, ["KAFKA_BOOTSTRAP", "WEB_PORT", "IOT_GEOFENCE_FILTER"])
    assert config.from_args(parser.parse_args([]), env) == config.load(env)
    s = config.from_args(parser.parse_args(["--bootstrap", "b:2", "--no-geofence-filter"]), env)
    assert (s.kafka_bootstrap, s.web_port, s.iot_geofence_filter) == ("b:2", 9999, False)


@pytest.mark.parametrize("env", [{"WEB_PORT": "eighty"}, {"IOT_GEOFENCE_FILTER": "maybe"}, {"IOT_BULK_WITHIN": "x"}])
def test_malformed_environment_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(env))):
        config.load(env)


# Non-default values for the settings with a format (an "x" prefix would not be one of their values).
OTHER_VALUES = {"ES_URL": "http://es.example:9201", "IOT_WEBHOOK_URL": "http://hook.example/alerts",
                "IOT_SINKS": "stdout", "IOT_INDEX_REFRESH": "5s", "IOT_TIMEZONE": "America/New_York",
                "MQTT_URL": "mqtt://broker.example:1884"}


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.env)
def test_every_setting_is_read_from_its_variable_and_its_flag(setting: config.Setting) -> None:
    # Another value than the default, through the environment and through the flag the table derives.
    if setting.type is bool:
        raw, value, argv = ("false", False, [setting.flag.replace("--", "--no-", 1)]) if setting.default \
            else ("true", True, [setting.flag])
    else:
        value = (setting.default + setting.type(7) if setting.type in (int, float)
                 else OTHER_VALUES.get(setting.env, f"x{setting.default}"))
        raw = str(value)
        argv = [setting.flag, raw]
    assert getattr(config.load({setting.env: raw}), setting.attr) == value != setting.default
    parser = argparse.ArgumentParser()
    config.add_flags(parser, [setting.env])
    assert getattr(config.from_args(parser.parse_args(argv), {}), setting.attr) == value


# --- schema presets -----------------------------------------------------------------------------

def test_taxi_preset_has_the_original_columns_in_order() -> None:
    preset = load_preset("taxi")
    assert preset.names == (
        "taxiId", "observationTime", "longitude", "latitude", "passengerCount", "tripTimeInSecs", "tripDistance",
        "observationIx", "medallion", "hack_license", "vendor_id", "rate_code", "store_and_fwd_flag",
        "pickup_datetime", "dropoff_datetime", "pickup_longitude", "pickup_latitude", "dropoff_longitude",
        "dropoff_latitude")
    assert preset.core == ("taxiId", "observationTime", "longitude", "latitude")


def test_taxi_row_becomes_the_wire_format() -> None:
    record, nulled = parse_row(load_preset("taxi"), TAXI_ROW)
    assert nulled == []
    assert record["taxiId"] == "0" and record["observationTime"] == 1356998401000
    assert record["longitude"] == -73.968073 and record["passengerCount"] == 1 and record["tripDistance"] == 6.21
    assert record["store_and_fwd_flag"] is None and record["dropoff_datetime"] == 1356999300000


@pytest.mark.parametrize(("index", "value", "reason"), [
    (0, "", "taxiId is empty"),
    (1, "yesterday", "observationTime"),
    (2, "east", "longitude"),
    (2, "-181", "outside"),
    (3, "90.5", "outside"),
])
def test_bad_core_fields_are_rejected_with_a_reason(index: int, value: str, reason: str) -> None:
    row = list(TAXI_ROW)
    row[index] = value
    with pytest.raises(InvalidRecord, match=reason):
        parse_row(load_preset("taxi"), row)


def test_wrong_column_count_is_rejected() -> None:
    with pytest.raises(InvalidRecord, match="expected 19 columns, found 18"):
        parse_row(load_preset("taxi"), TAXI_ROW[:-1])


def test_other_attributes_are_coerced_or_nulled_never_rejected() -> None:
    record = dict(zip(load_preset("taxi").names, TAXI_ROW))
    record.update(taxiId=7, passengerCount="3", tripTimeInSecs="a while", rate_code=2.0)
    out, nulled = typed_record(load_preset("taxi"), record)
    assert out["taxiId"] == "7" and out["passengerCount"] == 3 and out["rate_code"] == 2
    assert out["tripTimeInSecs"] is None and nulled == ["tripTimeInSecs"]


def test_user_preset_from_json_file(tmp_path) -> None:
    path = tmp_path / "bikes.json"
    path.write_text(json.dumps({"name": "bikes", "track": "id", "time": "t", "lon": "x", "lat": "y",
                                "fields": {"id": "string", "t": "time", "x": "float", "y": "float", "dock": "bool"}}))
    out, _ = typed_record(load_preset(str(path)), {"id": "b1", "t": "2020-01-01T00:00:00Z", "x": 1, "y": 2, "dock": "yes"})
    assert out == {"id": "b1", "t": 1577836800000, "x": 1.0, "y": 2.0, "dock": True}


@pytest.mark.parametrize(("content", "message"), [
    ('name = "x"\n', "missing key"),
    ('track="a"\ntime="t"\nlon="x"\nlat="y"\n[fields]\na="string"\nt="time"\nx="float"\ny="complex"\n', "type 'complex'"),
    ('track="a"\ntime="t"\nlon="x"\nlat="y"\n[fields]\na="string"\nt="time"\nx="float"\n', "lat field 'y'"),
    ("not toml [", "not valid TOML"),
])
def test_malformed_presets_get_clear_errors(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(content)
    with pytest.raises(SchemaError, match=message):
        load_preset(str(path))


def test_unknown_preset_lists_the_shipped_ones() -> None:
    with pytest.raises(SchemaError, match="shipped: osmand, taxi"):
        load_preset("buses")


# --- time parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["2013-01-01 00:00:01", "2013-01-01T00:00:01Z", "2013-01-01T01:00:01+01:00",
                                  "1356998401", "1356998401000", "1356998401.0"])
def test_every_notation_gives_the_same_instant(text: str) -> None:
    assert parse_time(text) == 1356998401000


def test_naive_times_follow_the_given_zone() -> None:
    assert parse_time("2013-07-01 12:00:00", zone("America/New_York")) == parse_time("2013-07-01T16:00:00Z")


@pytest.mark.parametrize("value", ["", "   ", "yesterday", "2013-13-01 00:00:00", True, None, float("nan"), "1e400"])
def test_non_times_raise(value) -> None:
    with pytest.raises(TimeParseError):
        parse_time(value)


instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2400, 1, 1), timezones=st.just(timezone.utc))


@given(instants)
def test_iso_text_round_trips_to_milliseconds(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    expected = int(moment.timestamp() * 1000 + 0.5) if moment.microsecond else int(moment.timestamp()) * 1000
    assert parse_time(moment.isoformat()) == expected
    assert parse_time(moment.strftime("%Y-%m-%d %H:%M:%S")) == expected - moment.microsecond // 1000


@given(st.integers(min_value=0, max_value=99_999_999_999))
def test_epoch_seconds_and_milliseconds_agree(seconds: int) -> None:
    assert parse_time(str(seconds)) == seconds * 1000
    if seconds * 1000 >= 100_000_000_000:
        assert parse_time(seconds * 1000) == seconds * 1000


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from(["int", "float", "string"]))
def test_lossless_coercion_round_trips(number: int, kind: str) -> None:
    value = coerce(kind, str(number))
    assert str(value) == str(number) or float(value) == float(number)


@given(st.text())
def test_coercion_either_succeeds_or_raises_value_error(text: str) -> None:
    for kind in ("int", "float", "bool", "time", "string"):
        try:
            value = coerce(kind, text)
        except ValueError:
            continue
        if text == "":
            assert value is None
        elif kind == "string":
            assert value == text
        elif kind == "int":  # an integer that loses nothing of the text
            assert type(value) is int and value == float(text)
        elif kind == "float":
            assert type(value) is float and value == float(text)
        elif kind == "bool":
            assert value is (text.strip().lower() in {"true", "1", "y", "yes", "t"})
        else:
            assert type(value) is int  # epoch milliseconds


def test_readme_configuration_table_is_the_generated_one() -> None:
    readme = (config.PACKAGE_DIR.parent / "README.md").read_text()
    assert config.markdown_table() in readme, "README's table is stale: paste geoiot.config.markdown_table()"


@pytest.mark.parametrize("value", ["1E100", 2**64, "99999999999999999999999"])
def test_integers_beyond_64_bits_are_refused(value) -> None:
    with pytest.raises(ValueError, match="64 bits"):
        coerce("int", value)


@pytest.mark.parametrize("value", [1e300, 10**20, "-99999999999999999"])
def test_epochs_beyond_year_9999_are_not_times(value) -> None:
    with pytest.raises(TimeParseError, match="years 1-9999"):
        parse_time(value)


async def test_wait_healthy_waits_for_200_and_names_the_last_answer_when_it_never_comes() -> None:
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from testkit.health import wait_healthy

    calls = {"n": 0}

    async def healthz(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.json_response({}, status=200 if calls["n"] >= 3 else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        await wait_healthy(http, base, timeout=5, interval=0.01)
        assert calls["n"] == 3  # returned at the first 200, not before
        calls["n"] = -1000
        with pytest.raises(TimeoutError, match=r"/healthz not healthy after 0.2 s \(last: HTTP 503\)"):
            await wait_healthy(http, base, timeout=0.2, interval=0.01)


# --- glibc malloc settings ----------------------------------------------------------------------------

HEAP_PROBE = """
import ctypes, json, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
from geoiot.malloc import keep_freed_heap
applied = keep_freed_heap() if sys.argv[1] == "tune" else None
blocks = [bytearray(1500) for _ in range(20000)]  # ~30 MB in glibc's heap (above pymalloc's 512 bytes)
held = libc.mallinfo2().arena
del blocks
print(json.dumps({"applied": applied, "held": held, "after_free": libc.mallinfo2().arena}))
"""


def _heap_after_free(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], check=True, capture_output=True, text=True,
                         env={**clean, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    return json.loads(out.stdout)


def test_freed_heap_is_kept_only_when_tuned() -> None:
    untuned = _heap_after_free("plain")
    tuned = _heap_after_free("tune")
    assert untuned["held"] > 25 << 20 and tuned["held"] > 25 << 20
    assert untuned["after_free"] < 8 << 20  # glibc's default trims the freed top of the heap at once
    assert tuned["applied"] is True and tuned["after_free"] >= tuned["held"]  # kept for the next batch


def test_malloc_environment_variables_win() -> None:
    result = _heap_after_free("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert result["applied"] is False and result["after_free"] < 8 << 20


def test_no_mallopt_means_nothing_applied(monkeypatch) -> None:
    def no_libc(*args, **kwargs):
        raise OSError("no such library")

    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    for name in malloc.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert malloc.keep_freed_heap() is False
