"""A client's id query cannot stall the supervisor.

The supervisor evaluates id queries in its own loop; a backtracking engine
would let one ``(a+)+$`` against a long id stop every controller. With RE2
the answer comes at once and the others are served as usual.
"""

from __future__ import annotations

import threading

from cosihost import InvalidRequestError, Resource
from cosihost.resource import MAX_NAME_LENGTH

import pytest

IDS = "Ids.test.cosihost.dev"


def test_a_pathological_id_query_answers_and_others_are_served(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={})
    longest = "a" * (MAX_NAME_LENGTH - 1) + "b"   # 2**255 paths for a backtracking engine
    with sup.client() as c:
        c.create(Resource("default", IDS, longest, {}))
        c.create(Resource("default", IDS, "aaa", {}))
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            with sup.client(timeout=5.0, retries=0) as c:
                for _ in range(20):
                    assert [r.metadata.id for r in c.list("default", IDS, id_regex="(a+)+$")] == ["aaa"]
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    with sup.client(timeout=5.0, retries=0) as other:   # no resend: a stalled loop fails this
        for _ in range(20):
            assert other.call("ping")["ready"]
    thread.join(30)
    assert not thread.is_alive() and not errors, errors


def test_an_id_query_re2_cannot_run_is_refused_over_the_wire(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={})
    with sup.client() as c, pytest.raises(InvalidRequestError, match="backreferences"):
        c.list("default", IDS, id_regex=r"(a)\1")
