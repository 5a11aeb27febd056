"""The ``cosihost`` executable against a real supervisor.

``shop`` is one supervisor shared by the module's tests (each test uses
its own ids or namespaces), running two small controllers that together
declare every kind of edge: a strong and a weak input, an exclusive and a
shared output, plus a sensitive type.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from cosihost.testing import SupervisorProcess

from cli_helpers import SHOP, Cli  # type: ignore[import-not-found]


@pytest.fixture(scope="module")
def shop() -> Iterator[SupervisorProcess]:
    sup = SupervisorProcess(controllers={"shop": SHOP})
    try:
        sup.start()
        yield sup
    finally:
        sup.cleanup()


@pytest.fixture
def cli(shop: SupervisorProcess) -> Iterator[Cli]:
    c = Cli(shop.runtime_dir)
    yield c
    c.close()
