"""Run the benchmarks: ``python -m benchmarks [--quick] [--only NAME ...]``.

To add a benchmark, write a module in this package with a
``run(quick: bool) -> list[Figure]`` function and add its name to BENCHMARKS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from .report import Figure, print_json, print_table

#: Benchmark modules of this package, run in this order.
BENCHMARKS = [
    "state_engine",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller counts: every benchmark in well under a minute")
    parser.add_argument("--only", action="append", metavar="NAME", default=[],
                        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    selected = [n for opt in args.only for n in opt.split(",") if n] or BENCHMARKS
    unknown = [n for n in selected if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    figures: list[Figure] = []
    failed: list[str] = []
    for name in selected:
        print(f"# {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            result = module.run(args.quick)
        except Exception:
            traceback.print_exc()
            print(f"# {name}: FAILED", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        print(f"# {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        print_json(result)
        figures.extend(result)
    print()
    print_table(figures)
    failed += [f.name for f in figures if f.ok is False]
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
