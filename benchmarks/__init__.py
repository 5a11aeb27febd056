"""Benchmarks for cosihost: ``python -m benchmarks [--quick] [--only NAME] [--plot]``.

Each benchmark is a module of this package with a ``run(quick: bool) ->
list[Figure]`` function, listed in :data:`benchmarks.__main__.BENCHMARKS`.
Figures are printed one JSON object per line, then as a table.

``state_engine`` measures the state in process; the ``host_*`` modules run
controllers as real processes under a real supervisor (see
:mod:`benchmarks.harness`) beside raw pyzmq + msgpack baselines
(:mod:`benchmarks.raw`) measured in the same run. docs/benchmarks.md has
the latest results and what bounds each figure.
"""
