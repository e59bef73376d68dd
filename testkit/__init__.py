"""Support code shared by the tests and the benchmarks: generated documents, presets, a served map,
SSE and health helpers, and the frozen row-wise reference. Never imported by the shipped packages and not
in the wheel; it resolves from the repository root (pytest's ``pythonpath``, ``python -m bench.<name>``).
"""
