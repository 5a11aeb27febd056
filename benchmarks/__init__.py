"""Benchmarks for cosihost: ``python -m benchmarks [--quick] [--only NAME]``.

Each benchmark is a module of this package with a ``run(quick: bool) ->
list[Figure]`` function, listed in :data:`benchmarks.__main__.BENCHMARKS`.
Figures are printed one JSON object per line, then as a table.
"""
