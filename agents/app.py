"""The Faust entry point (``faust -A agents.app worker``): the worker runtime's app, re-exported."""

from agents.worker.app import app

__all__ = ["app"]
