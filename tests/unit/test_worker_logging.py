"""The worker's root logger keeps the level asked for. Faust's terminal spinner sets it to DEBUG at ``-l warn``
and above, so that every library's debug call builds a record the handlers then drop (aiokafka makes one per
message sent); the worker runs without the spinner."""

from __future__ import annotations

import io
import logging

import pytest

from agents.app import app
from agents.worker.app import Worker


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_the_root_logger_keeps_the_level_asked_for(level: int) -> None:
    worker = Worker(app, loglevel=level, stdout=io.StringIO(), stderr=io.StringIO())
    logger = logging.Logger("root-under-test")
    logger.setLevel(level)  # as mode's setup_logging leaves the root logger before calling the hook
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    worker.on_setup_root_logger(logger, level)
    assert logger.level == level
    assert not logger.isEnabledFor(logging.DEBUG)
    assert len(logger.handlers) == 1  # no spinner handler
    assert worker.spinner is None
