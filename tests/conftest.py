"""Shared fixtures: real supervisors in child processes, always cleaned up."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from cosihost.testing import SupervisorProcess


@pytest.fixture
def supervisor_factory() -> Iterator[Callable[..., SupervisorProcess]]:
    """Make supervisors (``start=False`` to start them yourself); every one
    is stopped and its controller processes killed when the test ends."""
    made: list[SupervisorProcess] = []

    def make(*, start: bool = True, **kwargs: Any) -> SupervisorProcess:
        sup = SupervisorProcess(**kwargs)
        made.append(sup)
        return sup.start() if start else sup

    yield make
    for sup in made:
        sup.cleanup()
