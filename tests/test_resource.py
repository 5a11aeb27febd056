"""The resource model: the msgpack blob, the dict shape, and validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosihost.errors import InvalidRequestError
from cosihost.resource import (MAX_META_ITEMS, MAX_META_LENGTH, MAX_NAME_LENGTH, MAX_RESOURCE_BYTES,
                               Metadata, Resource, pack, received, unpack, validate, validated_copy)
from cosihost.state import InMemoryState

T = "Widgets.test.cosihost.dev"


def full() -> Resource:
    res = Resource("ns", T, "w1", {"a": [1, 2.5, None, True, b"\x00", "ü"]},
                   labels={"app": "web"}, annotations={"note": "x"})
    md = res.metadata
    md.version, md.owner, md.phase, md.finalizers = 7, "ctl", "tearing-down", ["f1", "f0"]
    md.created, md.updated = 1.5, 2.25
    return res


def test_pack_unpack_round_trips_every_field() -> None:
    res = full()
    back = unpack(pack(res))
    assert back == res
    assert back is not res and back.spec is not res.spec
    assert back.metadata.labels is not res.metadata.labels


specs = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(spec=specs, labels=st.dictionaries(st.text(), st.text(), max_size=3))
def test_pack_unpack_round_trips_any_msgpack_spec(spec, labels) -> None:
    res = Resource("ns", T, "id", spec, labels=labels)
    assert unpack(pack(res)) == res


def test_copy_is_independent() -> None:
    res = full()
    dup = res.copy()
    dup.spec["a"].append("more")
    dup.metadata.finalizers.append("f2")
    assert res == full()


def test_to_dict_shape_and_from_dict_round_trip() -> None:
    res = full()
    data = res.to_dict()
    assert set(data) == {"metadata", "spec"}
    assert data["metadata"] == {
        "namespace": "ns", "type": T, "id": "w1", "version": 7, "owner": "ctl",
        "phase": "tearing-down", "finalizers": ["f1", "f0"], "labels": {"app": "web"},
        "annotations": {"note": "x"}, "created": 1.5, "updated": 2.25,
    }
    back = Resource.from_dict(data)
    assert back == res
    data["metadata"]["labels"]["app"] = "changed"
    data["spec"]["a"].clear()
    assert back == res, "from_dict shares nothing with its input"
    res.metadata.labels["app"] = "changed too"
    assert Resource.from_dict(full().to_dict()).metadata.labels == {"app": "web"}


def test_from_dict_minimal_document() -> None:
    res = Resource.from_dict({"metadata": {"namespace": "ns", "type": T, "id": "x"}})
    assert res == Resource("ns", T, "x")
    assert (res.metadata.version, res.metadata.phase, res.spec) == (0, "running", None)


@pytest.mark.parametrize("data,word", [
    (None, "metadata"),
    ([], "metadata"),
    ({"spec": {}}, "metadata"),
    ({"metadata": "ns/T/x"}, "metadata"),
    ({"metadata": {"type": T, "id": "x"}}, "namespace"),
    ({"metadata": {"namespace": "ns", "id": "x"}}, "type"),
    ({"metadata": {"namespace": "ns", "type": T}}, "id"),
    ({"metadata": {"namespace": "ns", "type": T, "id": "x", "colour": "red"}}, "colour"),
])
def test_from_dict_errors(data, word: str) -> None:
    with pytest.raises(InvalidRequestError, match=word):
        Resource.from_dict(data)


def test_validate_returns_the_blob_and_validated_copy_a_copy() -> None:
    res = full()
    assert unpack(validate(res)) == res
    dup = validated_copy(res)
    assert dup == res and dup is not res


def _set(field: str, value):
    def change(res: Resource) -> None:
        setattr(res.metadata, field, value)
    return change


def _spec(value):
    def change(res: Resource) -> None:
        res.spec = value
    return change


@pytest.mark.parametrize("change,field", [
    (_set("namespace", ""), "namespace"),
    (_set("namespace", None), "namespace"),
    (_set("type", 3), "type"),
    (_set("type", "x" * (MAX_NAME_LENGTH + 1)), "type"),
    (_set("id", "a\x00b"), "id"),
    (_set("id", b"id"), "id"),
    (_set("labels", None), "labels"),
    (_set("labels", {"k": 1}), "labels"),
    (_set("labels", {0: "v"}), "labels"),
    (_set("labels", {str(i): "v" for i in range(MAX_META_ITEMS + 1)}), "labels"),
    (_set("annotations", {"k": "v" * (MAX_META_LENGTH + 1)}), "annotations"),
    (_set("finalizers", ("a",)), "finalizers"),
    (_set("finalizers", [None]), "finalizers"),
    (_set("phase", "stopped"), "phase"),
    (_set("version", "1"), "version"),
    (_set("version", True), "version"),
    (_spec({1, 2}), "spec"),
    (_spec(object()), "spec"),
    (_spec(2**64), "spec"),
    (_spec({(1, 2): "tuple keys decode as unhashable lists"}), "spec"),
    (_spec("x" * MAX_RESOURCE_BYTES), "spec"),
])
def test_validation_errors_name_the_field(change, field: str) -> None:
    res = full()
    change(res)
    with pytest.raises(InvalidRequestError, match=field):
        validate(res)
    with pytest.raises(InvalidRequestError, match=field):
        validated_copy(res)


def test_validate_refuses_what_is_not_a_resource() -> None:
    with pytest.raises(InvalidRequestError, match="Resource"):
        validate({"metadata": {}})


def test_resource_just_under_the_size_limit_is_fine() -> None:
    res = Resource("ns", T, "id", "")
    overhead = len(pack(res))
    res.spec = "x" * (MAX_RESOURCE_BYTES - overhead - 8)
    assert len(validate(res)) <= MAX_RESOURCE_BYTES


def test_finalizers_are_an_ordered_set() -> None:
    md = Metadata("ns", T, "id")
    assert md.add_finalizers("b", "a", "b") is True
    assert md.finalizers == ["b", "a"]
    assert md.add_finalizers("a") is False
    assert md.remove_finalizers("b", "missing") is True
    assert md.remove_finalizers("missing") is False
    assert md.finalizers == ["a"]


def test_equality_and_repr() -> None:
    assert full() == full()
    other = full()
    other.metadata.version += 1
    assert other != full()
    assert full() != "not a resource"
    assert "w1" in repr(full()) and "v7" in repr(full())


def test_a_received_resource_is_checked_and_handed_over_once() -> None:
    res = Resource("ns", "Items.test.cosihost.dev", "a", {"n": 1}, labels={"k": "v"})
    state = InMemoryState()
    got = received(pack(res))
    assert state.create(got).spec == {"n": 1}  # taken as decoded, not copied again
    with pytest.raises(InvalidRequestError, match="handed over once"):
        state.update(got)
    bad = Resource("ns", "Items.test.cosihost.dev", "b")
    bad.metadata.phase = "nonsense"
    with pytest.raises(InvalidRequestError, match="phase"):
        state.create(received(pack(bad)))
    big = Resource("ns", "Items.test.cosihost.dev", "c", "x" * MAX_RESOURCE_BYTES)
    with pytest.raises(InvalidRequestError, match="over the"):
        state.create(received(pack(big)))
    assert [r.metadata.id for r in state.list("ns", "Items.test.cosihost.dev")] == ["a"]
