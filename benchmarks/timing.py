"""Small timing helpers shared by the benchmark modules."""

from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def each(items: Iterable[T], fn: Callable[[T], object]) -> None:
    """Call ``fn`` on every item, keeping no result alive (no extra GC work)."""
    for item in items:
        fn(item)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The fastest of ``repeat`` calls, in seconds (the least disturbed run)."""
    return min(timed(fn) for _ in range(repeat))


def rate(count: int, seconds: float) -> float:
    """Operations per second."""
    return count / seconds if seconds > 0 else float("inf")
