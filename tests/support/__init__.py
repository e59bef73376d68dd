"""Test support shared by the tests and the benchmarks (never imported by the packages).

``tests`` has no ``__init__.py`` (pytest imports the test modules by their own names), so ``tests.support``
resolves from the repository root: pytest puts it on the path (``pythonpath`` in pyproject.toml) and
the benchmarks run as ``python -m bench.<name>`` from the root.
"""
