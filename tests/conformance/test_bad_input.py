"""Bad input is an InvalidRequestError that names the field, and changes nothing.

Every case runs against every implementation (in process and, later, over
the wire). After the refused call the kind must hold exactly what it held
before, and a kind watcher must see the barrier write as its next event.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from cosihost import InvalidRequestError, Resource
from cosihost.resource import MAX_NAME_LENGTH, MAX_RESOURCE_BYTES

T = "Widgets.test.cosihost.dev"
#: The namespace the cases write to; each test points it at its own ``ns``
#: (cases are built before fixtures run, so they read it at call time).
NS = "default"


def existing(state) -> Resource:
    return state.get(NS, T, "existing")


def with_spec(spec: Any) -> Callable[[Any], Any]:
    """An update of the existing resource to ``spec``."""
    def call(state) -> Any:
        res = existing(state)
        res.spec = spec
        return state.update(res)
    return call


def with_meta(field: str, value: Any, *, id: str = "new", verb: str = "create") -> Callable[[Any], Any]:
    """A create (or update) of a resource whose metadata ``field`` is ``value``."""
    def call(state) -> Any:
        res = Resource(NS, T, id)
        setattr(res.metadata, field, value)
        return getattr(state, verb)(res)
    return call


class Unencodable:
    pass


CASES: list[tuple[str, Callable[[Any], Any], str]] = [
    ("get-empty-namespace", lambda s: s.get("", T, "existing"), "namespace"),
    ("get-empty-type", lambda s: s.get(NS, "", "existing"), "type"),
    ("get-empty-id", lambda s: s.get(NS, T, ""), "id"),
    ("get-int-namespace", lambda s: s.get(1, T, "existing"), "namespace"),
    ("get-none-type", lambda s: s.get(NS, None, "existing"), "type"),
    ("get-bytes-id", lambda s: s.get(NS, T, b"existing"), "id"),
    ("list-empty-namespace", lambda s: s.list("", T), "namespace"),
    ("list-int-type", lambda s: s.list(NS, 7), "type"),
    ("create-empty-namespace", lambda s: s.create(Resource("", T, "new")), "namespace"),
    ("create-empty-type", lambda s: s.create(Resource(NS, "", "new")), "type"),
    ("create-empty-id", lambda s: s.create(Resource(NS, T, "")), "id"),
    ("create-int-id", lambda s: s.create(Resource(NS, T, 5)), "id"),
    ("create-set-spec", lambda s: s.create(Resource(NS, T, "new", {"tags": {1, 2}})), "spec"),
    ("create-object-spec", lambda s: s.create(Resource(NS, T, "new", Unencodable())), "spec"),
    ("create-huge-int-spec", lambda s: s.create(Resource(NS, T, "new", 2**70)), "spec"),
    ("create-oversized", lambda s: s.create(Resource(NS, T, "new", "x" * MAX_RESOURCE_BYTES)), "spec"),
    ("create-tuple-keyed-spec", lambda s: s.create(Resource(NS, T, "new", {(1, 2): "x"})), "spec"),
    ("create-nul-in-id", lambda s: s.create(Resource(NS, T, "new\x00")), "id"),
    ("create-overlong-namespace", lambda s: s.create(Resource("n" * (MAX_NAME_LENGTH + 1), T, "new")),
     "namespace"),
    ("create-int-label-value", lambda s: s.create(Resource(NS, T, "new", labels={"k": 1})), "labels"),
    ("create-int-annotation-key", lambda s: s.create(Resource(NS, T, "new", annotations={1: "v"})),
     "annotations"),
    ("create-labels-not-mapping", with_meta("labels", ["k"]), "labels"),
    ("create-int-finalizer", with_meta("finalizers", [1]), "finalizers"),
    ("update-set-spec", with_spec({1, 2}), "spec"),
    ("update-object-spec", with_spec([Unencodable()]), "spec"),
    ("update-oversized", with_spec({"blob": b"x" * MAX_RESOURCE_BYTES}), "spec"),
    ("update-tuple-keyed-spec", with_spec({"m": {(1,): 1}}), "spec"),
    ("update-string-version", with_meta("version", "1", id="existing", verb="update"), "version"),
    ("update-int-phase", lambda s: s.update(existing(s), expected_phase=1), "expected_phase"),
    ("update-unknown-phase", lambda s: s.update(existing(s), expected_phase="gone"), "expected_phase"),
    ("update-empty-id", lambda s: s.update(Resource(NS, T, "")), "id"),
    ("modify-set-spec", lambda s: s.modify(NS, T, "existing", lambda spec: spec.update(x={1})), "spec"),
    ("modify-creating-set-spec", lambda s: s.modify(NS, T, "new", lambda spec: spec.update(x={1})),
     "spec"),
    ("modify-empty-id", lambda s: s.modify(NS, T, "", lambda spec: None), "id"),
    ("destroy-empty-namespace", lambda s: s.destroy("", T, "existing"), "namespace"),
    ("teardown-int-id", lambda s: s.teardown(NS, T, 3), "id"),
    ("add-finalizer-empty-type", lambda s: s.add_finalizer(NS, "", "existing", "f"), "type"),
    ("add-finalizer-empty", lambda s: s.add_finalizer(NS, T, "existing", ""), "finalizers"),
    ("add-finalizer-int", lambda s: s.add_finalizer(NS, T, "existing", 1), "finalizers"),
    ("remove-finalizer-empty-id", lambda s: s.remove_finalizer(NS, T, "", "f"), "id"),
    ("list-bad-selector", lambda s: s.list(NS, T, labels="app in web"), "labels"),
    ("list-empty-selector-term", lambda s: s.list(NS, T, labels="app=web,,tier"), "labels"),
    ("list-selector-not-string", lambda s: s.list(NS, T, labels=5), "labels"),
    ("list-selector-list-of-int", lambda s: s.list(NS, T, labels=["app", 5]), "labels"),
    ("list-bad-id-regex", lambda s: s.list(NS, T, id_regex="(unclosed"), "id_regex"),
    ("list-id-regex-not-string", lambda s: s.list(NS, T, id_regex=5), "id_regex"),
    ("watch-empty-id", lambda s: s.watch(NS, T, ""), "id"),
    ("watch-kind-empty-type", lambda s: s.watch_kind(NS, ""), "type"),
    ("watch-kind-bad-selector", lambda s: s.watch_kind(NS, T, labels="=web"), "labels"),
    ("watch-kind-garbage-bookmark", lambda s: s.watch_kind(NS, T, since="not a bookmark"), "since"),
]


@pytest.mark.parametrize("call,field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(state, ns, expect, call, field, monkeypatch) -> None:
    monkeypatch.setitem(globals(), "NS", ns)
    state.create(Resource(NS, T, "existing", {"n": 1}, labels={"app": "web"}))
    before = state.list(NS, T)
    w = state.watch_kind(NS, T)

    with pytest.raises(InvalidRequestError) as exc:
        call(state)
    assert field in str(exc.value)

    assert state.list(NS, T) == before
    state.create(Resource(NS, T, "barrier"))
    expect(w, "created", "barrier")


def test_bootstrap_and_bookmark_together_are_refused(state, ns, expect) -> None:
    w = state.watch_kind(ns, T, bootstrap=True)
    mark = expect(w, "bootstrapped").bookmark
    with pytest.raises(InvalidRequestError, match="since"):
        state.watch_kind(ns, T, bootstrap=True, since=mark)
