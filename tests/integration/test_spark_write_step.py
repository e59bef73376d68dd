"""The Spark job's write step (agents.spark.worker.Worker: no Spark needed) on the real Elasticsearch: reports
re-sent after the track moved on are late, written create-only, and meet their stored documents; the 409s keep
them and are counted as ``already_stored``, as the worker counts them (geoiot_agent_already_stored_total)."""

from __future__ import annotations

import urllib.request
import uuid

import orjson
import pandas as pd
import pytest

from agents.spark.worker import JobContext, Worker, group_function
from geoiot import config
from testkit.group_state import FakeGroupState

pytestmark = pytest.mark.integration


def reports(track: str, seconds: list[int]) -> pd.DataFrame:
    values = [orjson.dumps({"taxiId": track, "observationTime": f"2013-01-01 00:00:{s:02d}", "longitude": -73.98,
                            "latitude": 40.75 + s * 1e-4}) for s in seconds]
    return pd.DataFrame({"key": [track.encode()] * len(values), "value": values, "topic": ["src"] * len(values),
                         "partition": [0] * len(values), "offset": list(range(len(values)))})


def test_a_resent_report_is_kept_and_counted_as_already_stored(stack: config.Settings) -> None:
    index = f"spark-write-{uuid.uuid4().hex[:8]}"
    context = JobContext.from_settings(config.load({}, iot_index=index, es_url=stack.es_url))
    state = FakeGroupState(None, 10_000)
    run = group_function(context)
    frame = reports("a", [0, 10, 20])
    first = next(run(("a",), iter([frame]), state))  # the track's state is now at its report of 00:20
    again = next(run(("a",), iter([frame]), state))  # the same reports re-sent: late, create-only
    worker = Worker(context)
    try:
        stats = [out[out["kind"] == "stats"].iloc[0] for out in (worker.store(first), worker.store(again))]
    finally:
        worker.loop.run_until_complete(worker.sink.stop())
        worker.loop.close()
        urllib.request.urlopen(urllib.request.Request(f"{stack.es_url}/{index}*", method="DELETE"), timeout=30)
    assert (stats[0]["indexed"], stats[0]["already_stored"], stats[0]["dead"]) == (3, 0, 0)
    # re-sent: each report is at or before the state's time, so late: its create met its stored document
    assert (stats[1]["already_stored"], stats[1]["dead"], stats[1]["rejected"]) == (3, 0, 0)
