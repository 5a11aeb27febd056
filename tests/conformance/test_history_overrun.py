"""Bounded history: a watcher that falls behind is told so, never skipped ahead.

The history size is not part of the public API (over the wire it is the
supervisor's setting), so these tests build ``InMemoryState(history=N)``
directly instead of using the parametrized ``state`` fixture.
"""

from __future__ import annotations

import pytest

from cosihost import InMemoryState, Resource
from cosihost.state.events import make_bookmark

NS, T, T2 = "default", "Widgets.test.cosihost.dev", "Gadgets.test.cosihost.dev"
HISTORY = 4


@pytest.fixture
def small() -> InMemoryState:
    return InMemoryState(history=HISTORY)


def churn(state: InMemoryState, n: int, prefix: str = "r") -> None:
    for i in range(n):
        state.create(Resource(NS, T, f"{prefix}{i}"))


def assert_overrun(watch) -> None:
    event = watch.next(timeout=5)
    assert event is not None and event.kind == "error", event
    assert "overrun" in event.error
    assert watch.next(timeout=0) is None, "an error event ends the watch"


def test_watcher_within_history_sees_everything(small, expect) -> None:
    w = small.watch_kind(NS, T)
    churn(small, HISTORY)
    for i in range(HISTORY):
        expect(w, "created", f"r{i}")


def test_idle_watcher_gets_an_error_not_a_skip(small) -> None:
    w = small.watch_kind(NS, T)
    churn(small, HISTORY + 1)
    assert_overrun(w)


def test_watcher_that_falls_behind_midway_gets_an_error(small, expect) -> None:
    w = small.watch_kind(NS, T)
    churn(small, 2)
    expect(w, "created", "r0")
    churn(small, HISTORY + 1, prefix="late")
    # late0 is gone from the history: the watch may still deliver r1 (it may
    # hold it already), but never late1 and on as if late0 had not happened.
    seen = []
    while (event := w.next(timeout=5)) is not None and event.kind != "error":
        seen.append(event.resource.metadata.id)
    assert seen in ([], ["r1"])
    assert event is not None and "overrun" in event.error


def test_filtered_watchers_overrun_too(small, expect) -> None:
    labelled = small.watch_kind(NS, T, labels="app=web")
    single = small.watch(NS, T, "quiet")
    expect(single, "destroyed", "quiet")
    churn(small, HISTORY + 1)
    assert_overrun(labelled)
    assert_overrun(single)


def test_bootstrap_then_overrun(small, expect) -> None:
    churn(small, 2, prefix="old")
    w = small.watch_kind(NS, T, bootstrap=True)
    expect(w, "created", "old0")
    churn(small, HISTORY + 1)
    expect(w, "created", "old1")  # the bootstrap was taken before the churn
    expect(w, "bootstrapped")
    assert_overrun(w)


def test_other_kinds_do_not_push_a_watcher_out(small, expect) -> None:
    w = small.watch_kind(NS, T)
    for i in range(HISTORY * 3):
        small.create(Resource(NS, T2, f"g{i}"))
    small.create(Resource(NS, T, "mine"))
    expect(w, "created", "mine")


def test_resume_from_an_evicted_bookmark_is_an_error(small, expect) -> None:
    w = small.watch_kind(NS, T)
    churn(small, 1)
    mark = expect(w, "created", "r0").bookmark
    churn(small, HISTORY + 1, prefix="more")
    assert_overrun(small.watch_kind(NS, T, since=mark))


@pytest.mark.parametrize("mark", [make_bookmark("another-epoch", 1), None], ids=["epoch", "ahead"])
def test_resume_from_a_foreign_bookmark_is_an_error(small, mark) -> None:
    churn(small, 1)
    mark = mark or make_bookmark(small.epoch, 99)
    w = small.watch_kind(NS, T, since=mark)
    event = w.next(timeout=5)
    assert event is not None and event.kind == "error" and "resync" in event.error
    assert w.next(timeout=0) is None
