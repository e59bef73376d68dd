"""Presets that stand for a user's own layout in tests (not shipped with the packages)."""

from pathlib import Path

FLIGHTS = Path(__file__).with_name("flights.toml")
FLIGHTS_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "flights-us-2004.csv"
