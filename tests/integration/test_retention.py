"""Retention against the real Elasticsearch: expired daily indices go, the alias keeps answering, and the latest
positions older than the retention go with them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from agents.store.index import ensure_index
from elasticsearch.helpers import async_bulk

from agents.store.retention import delete_expired, expired, latest_cutoff, latest_delete, trim_latest
from geoiot import documents
from geoiot.schema import load_preset
from testkit.observations import bulk_index, document
from testkit import actions as es_actions

PRESET = load_preset("taxi")
NOW = 1_700_000_000_000  # 2023-11-14T22:13:20Z
DAY = documents.DAY_MS


def test_expired_needs_the_whole_day_past_the_retention_and_ignores_other_names():
    names = ["obs-2023.11.04", "obs-2023.11.03", "obs-2023.11.05", "obs-bw-2000.01.01", "obs-2023.13.01", "obs"]
    # The 2023.11.04 day ends at 11-05T00:00, 9 days 22 h before NOW: expired after 9 days, not after 10.
    assert expired("obs", names, 9, NOW) == ["obs-2023.11.03", "obs-2023.11.04"]
    assert expired("obs", names, 10, NOW) == ["obs-2023.11.03"]
    assert expired("obs", names, 0, NOW) == []


@pytest.mark.integration
async def test_retention_deletes_old_daily_indices_idempotently_and_the_alias_keeps_working(
        stack, es, new_index, python_env):
    base = new_index("ret")
    await ensure_index(es, dataclasses.replace(stack, iot_index=base), PRESET, index=base)
    times = [NOW - 40 * DAY, NOW - 31 * DAY, NOW - 29 * DAY, NOW - DAY]
    docs = [document(PRESET, f"t{i}", t, -73.9, 40.7, []) for i, t in enumerate(times)]
    assert await bulk_index(es, base, PRESET, iter(docs)) == 4
    before = sorted((await es.indices.get(index=documents.index_pattern(base))).body)
    assert before == sorted(documents.index_for(base, t) for t in times)

    assert await delete_expired(es, base, 30, NOW, dry_run=True) == before[:2]
    assert sorted((await es.indices.get(index=documents.index_pattern(base))).body) == before
    assert await delete_expired(es, base, 30, NOW) == before[:2]
    assert await delete_expired(es, base, 30, NOW) == []  # idempotent
    assert sorted((await es.indices.get(index=documents.index_pattern(base))).body) == before[2:]
    await es.indices.refresh(index=base)
    assert (await es.count(index=base))["count"] == 2  # through the alias

    # The command, on the real clock: with 1 day of retention the two 2023 days left go too.
    result = subprocess.run([sys.executable, "-m", "agents.store.retention", "--index", base, "--retention-days", "1"],
                            env=python_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"event": "retention"' in result.stdout
    assert all(documents.index_for(base, t) in result.stdout for t in times[2:])
    assert (await es.options(ignore_status=404).indices.get(index=documents.index_pattern(base))).body == {}


def test_latest_positions_go_at_the_same_boundary_as_the_daily_indices() -> None:
    # a report at time t lies in the daily index of its day; that index goes exactly when t < latest_cutoff
    for days in (1, 9, 10, 30):
        cutoff = latest_cutoff(days, NOW)
        for t in (cutoff - 1, cutoff, cutoff + DAY - 1, NOW - days * DAY, NOW):
            gone = documents.index_for("obs", t) in expired("obs", [documents.index_for("obs", t)], days, NOW)
            assert gone == (t < cutoff), (days, t)


@pytest.mark.integration
async def test_retention_trims_the_latest_index_too(stack, es, new_index, python_env):
    base = new_index("retl")
    await ensure_index(es, dataclasses.replace(stack, iot_index=base), PRESET, index=base)
    cutoff = latest_cutoff(30, NOW)
    times = {"old": cutoff - DAY, "edge": cutoff - 1, "kept": cutoff, "new": NOW - DAY}
    actions = [es_actions.latest_action(base, track, t, document(PRESET, track, t, -73.9, 40.7, []))
               for track, t in times.items()]
    await async_bulk(es, actions, refresh=True)
    latest = documents.latest_index(base)
    assert await trim_latest(es, base, PRESET.time, 30, NOW, dry_run=True) == 2
    assert (await es.count(index=latest))["count"] == 4
    assert await trim_latest(es, base, PRESET.time, 30, NOW) == 2
    assert await trim_latest(es, base, PRESET.time, 30, NOW) == 0  # idempotent
    left = await es.search(index=latest, size=10)
    assert sorted(h["_id"] for h in left["hits"]["hits"]) == ["kept", "new"]
    assert await trim_latest(es, base, PRESET.time, 0, NOW) == 0  # 0 keeps everything
    # a search found "new" stale, but a newer report replaced it before the delete: the delete conflicts
    done = await es.bulk(operations=[latest_delete(latest, "new", latest_cutoff(1, NOW))], refresh=True)
    assert done["items"][0]["delete"]["status"] == 409
    assert (await es.count(index=latest))["count"] == 2
    assert await trim_latest(es, "retl-none-such", PRESET.time, 30, NOW) == 0  # no latest index: nothing

    # the command, on the real clock, with 1 day: "kept" (2023) goes too, "new" is 2023 as well
    result = subprocess.run([sys.executable, "-m", "agents.store.retention", "--index", base, "--retention-days", "1"],
                            env=python_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"latest_deleted": 2' in result.stdout
    assert (await es.count(index=latest))["count"] == 0
