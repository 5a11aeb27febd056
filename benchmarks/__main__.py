"""Run the benchmarks: ``python -m benchmarks [--quick] [--only NAME ...] [--plot [PNG]]``.

To add a benchmark, write a module in this package with a
``run(quick: bool) -> list[Figure]`` function and add its name to BENCHMARKS.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path

from .report import Figure, Skipped, print_json, print_table

#: Where ``--plot`` writes the write-to-event latency distribution.
LATENCY_PNG = Path(__file__).resolve().parent.parent / "docs" / "latency.png"

#: Benchmark modules of this package, run in this order.
BENCHMARKS = [
    "state_engine",
    "host_rates",
    "host_events",
    "host_scale",
    "host_processes",
    "etcd_backend",
    "qcontroller",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller counts (same figure names): all of them in under a minute")
    parser.add_argument("--only", action="append", metavar="NAME", default=[],
                        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--plot", nargs="?", const=str(LATENCY_PNG), metavar="PNG",
                        help=f"plot the write-to-event latency distribution (default {LATENCY_PNG}); "
                             "full runs only, needs matplotlib")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    if args.plot and args.quick:
        parser.error("--plot is for full runs: quick runs have too few samples")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib")
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    selected = [n for opt in args.only for n in opt.split(",") if n] or BENCHMARKS
    unknown = [n for n in selected if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    figures: list[Figure] = []
    failed: list[str] = []
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
          f"load average {load_before:.1f}", file=sys.stderr, flush=True)
    for name in selected:
        print(f"# {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            result = module.run(args.quick)
        except Skipped as skip:
            print(f"# {name}: skipped: {skip}", file=sys.stderr, flush=True)
            print_json(skip.figures)
            figures.extend(skip.figures)
            continue
        except Exception:
            traceback.print_exc()
            print(f"# {name}: FAILED", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        print(f"# {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        print_json(result)
        figures.extend(result)
    print()
    if args.markdown:
        print(f"{datetime.date.today()}, {os.cpu_count()} cores{', --quick' if args.quick else ''}, "
              f"{time.perf_counter() - began:.0f} s, load average {load_before:.1f} before and "
              f"{os.getloadavg()[0]:.1f} after\n")
    print_table(figures, markdown=args.markdown)
    if args.plot:
        sampled = [f for f in figures if f.samples]
        if sampled:
            from .plot import latency_plot
            latency_plot(sampled[0], Path(args.plot))
            print(f"# plot: {args.plot}", file=sys.stderr)
    failed += [f.name for f in figures if f.ok is False]
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
