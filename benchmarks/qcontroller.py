"""Items through a QController, against a plain controller doing the same work.

Figure (``--quick`` uses 2,000 items instead of 10,000; the count is in the note):

- ``qcontroller_items_per_s``: N Int resources exist before the controller
  starts; it writes one Str per Int (a get and a modify). The QController
  does it one queued item per reconcile (queue filled at start, a backoff
  and dedup entry per item); the baseline is a plain controller doing the
  same writes in one list-and-loop round. Both run in the test harness
  (the real ``rt`` and scheduler over an in-memory state, no sockets), so
  the figure is the price of the queue itself, not of the wire.
"""

from __future__ import annotations

import time
from typing import Any

from cosihost import Controller, Input, InMemoryState, NotFoundError, Output, QController, Resource
from cosihost.qcontroller import Pointer
from cosihost.testing import ControllerHarness

from .report import Figure

INTS = "Ints.bench.cosihost.dev"
STRS = "Strs.bench.cosihost.dev"


class QCopy(QController):
    name = "bench.QCopy"
    primary = [Input("in", INTS)]
    outputs = [Output(STRS)]

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        try:
            value = rt.get(*ptr).spec["value"]
        except NotFoundError:
            return
        rt.modify("out", STRS, ptr.id, lambda s: s.update(value=str(value)))


class PlainCopy(Controller):
    name = "bench.PlainCopy"
    inputs = [Input("in", INTS)]
    outputs = [Output(STRS)]

    def reconcile(self, rt: Any) -> None:
        for res in rt.list("in", INTS):
            value = res.spec["value"]
            rt.modify("out", STRS, res.metadata.id, lambda s: s.update(value=str(value)))


def items_per_s(controller: type[Controller], n: int) -> float:
    state = InMemoryState()
    for i in range(n):
        state.create(Resource("in", INTS, f"i{i}", {"value": i}))
    h = ControllerHarness(controller, state=state)
    start = time.perf_counter()
    with h:
        h.wait_idle(timeout=600)
        took = time.perf_counter() - start
    done = len(state.list("out", STRS))
    if done != n:
        raise RuntimeError(f"{controller.name} wrote {done} of {n} outputs")
    return n / took


def run(quick: bool) -> list[Figure]:
    n = 2_000 if quick else 10_000
    plain = items_per_s(PlainCopy, n)
    queued = items_per_s(QCopy, n)
    return [Figure("qcontroller_items_per_s", round(queued), "items/s", baseline=round(plain), target=0.5,
                   goal="ratio>=", note=f"{n:,} items, one reconcile each; baseline: a plain controller's "
                                        "single round over the same items (in-process harness)")]
