"""Starting the worker against the real Kafka and Elasticsearch: an unreachable Elasticsearch or an index
template Elasticsearch refuses is one clear line and a non-zero exit (tests/unit/test_startup.py: the rest)."""

from __future__ import annotations

import pytest

from agents.store.index import IndexSetupError, ensure_index
from geoiot import config
from geoiot.schema import load_preset
from test_startup import COMPONENTS, run, the_line


@pytest.mark.integration
async def test_the_worker_fails_in_one_line_when_elasticsearch_is_unreachable(stack, new_topic, python_env) -> None:
    topic = await new_topic("start-es", partitions=1)
    env = dict(python_env, KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ES_URL="http://127.0.0.1:1", IOT_TOPIC=topic,
               IOT_DLQ_TOPIC=f"{topic}-dlq", IOT_ALERTS_TOPIC=f"{topic}-alerts", IOT_APP_ID=topic)
    try:
        result = run(COMPONENTS["worker"], env)
        assert result.returncode == 1
        assert the_line(result, "agents: ").startswith("agents: cannot reach Elasticsearch at ES_URL=http://127.0.0.1:1")
    finally:
        from geoiot import topics

        await topics.delete_topics(stack.kafka_bootstrap, prefix=f"{topic}-")


@pytest.mark.integration
async def test_the_worker_names_an_overlapping_index_template_in_one_line(stack, es, new_topic, new_index,
                                                                         python_env) -> None:
    """Issue 16, case 5: IOT_INDEX=foo-bw while a template for foo exists used to be a raw BadRequestError."""
    base = new_index("start-tpl")
    settings = config.load({}, iot_index=base)
    await ensure_index(es, settings, load_preset("taxi"))  # the template for <base>-*
    overlapping = config.load({}, iot_index=f"{base}-bw")
    with pytest.raises(IndexSetupError, match=f"refused the index template '{base}-bw'"):
        await ensure_index(es, overlapping, load_preset("taxi"))

    topic = await new_topic("start-tpl", partitions=1)
    env = dict(python_env, KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ES_URL=stack.es_url, IOT_TOPIC=topic,
               IOT_DLQ_TOPIC=f"{topic}-dlq", IOT_ALERTS_TOPIC=f"{topic}-alerts", IOT_APP_ID=topic,
               IOT_INDEX=f"{base}-bw")
    try:
        result = run(COMPONENTS["worker"], env)
        assert result.returncode == 1
        line = the_line(result, "agents: ")
        assert line.startswith(f"agents: Elasticsearch refused the index template '{base}-bw'")
        assert base in line and "IOT_INDEX" in line
    finally:
        from geoiot import topics

        await topics.delete_topics(stack.kafka_bootstrap, prefix=f"{topic}-")
