"""Shared event model, schema presets and configuration for every component of the pipeline."""
