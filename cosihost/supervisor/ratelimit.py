"""A controller's write rate limit, kept by the supervisor.

A reconcile loop that writes in a tight loop (a spec that never settles,
two controllers fighting over a value; talos#7592) would otherwise flood
the host: every write wakes the supervisor and every watcher. COSI's
``WithChangeRateLimit`` throttles such a controller; here the supervisor
does, so a controller cannot opt out: ``limits = {"writes": 20}`` (per
second, with ``"write_burst"``, default the same number) in the class or
``[limits."name"]`` in the config. A write over the limit is refused with
``ThrottledError`` and never applied; a controller's ``rt`` waits the time
the refusal names and sends it again, so its reconcile only slows down.
Refusals are counted in its status (``throttled``) and metrics.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..errors import InvalidRequestError

KEYS = ("writes", "write_burst")


@dataclasses.dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = 0.0
    at: float = 0.0
    refused: int = 0

    def __post_init__(self) -> None:
        self.tokens, self.at = self.burst, time.monotonic()

    def take(self, n: int = 1) -> float:
        """0.0 when ``n`` writes may go now (and takes them), else the seconds until they may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        self.refused += 1
        return (min(n, self.burst) - self.tokens) / self.rate


def split(name: str, limits: dict[str, Any]) -> tuple[dict[str, Any], TokenBucket | None]:
    """The process limits (for the limiter) and the write bucket, if any."""
    rest = {k: v for k, v in limits.items() if k not in KEYS}
    if "writes" not in limits:
        if "write_burst" in limits:
            raise InvalidRequestError(f"controller {name!r}: write_burst needs writes (per second)")
        return rest, None
    rate, burst = limits["writes"], limits.get("write_burst", limits["writes"])
    for key, value in (("writes", rate), ("write_burst", burst)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidRequestError(f"controller {name!r}: limit {key!r} must be a positive number, not {value!r}")
    return rest, TokenBucket(float(rate), max(1.0, float(burst)))
