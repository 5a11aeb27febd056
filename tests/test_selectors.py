"""Label selectors: parsing (errors are InvalidRequestError naming ``labels``)
and matching, term by term and combined (AND within a string, OR across a list)."""

from __future__ import annotations

import re

import pytest

from cosihost.errors import InvalidRequestError
from cosihost.selectors import Query, Selector, Term, compile_id_regex, parse_query, parse_selector

LABELS = {"app": "web", "tier": "front", "gen": "9", "size": "b", "empty": ""}


def matches(selector, labels=LABELS) -> bool:
    return parse_query(selector).matches(labels)


@pytest.mark.parametrize("text,expected", [
    ("app=web", True), ("app==web", True), ("app=db", False), ("missing=web", False),
    ("empty=", True), ("app=", False),
    ("app!=db", True), ("app!=web", False), ("missing!=web", True),
    ("app", True), ("missing", False), ("empty", True),
    ("!app", False), ("!missing", True), ("! missing", True),
    ("tier in (front,back)", True), ("tier in (back)", False), ("missing in (front)", False),
    ("tier notin (back, side)", True), ("tier notin (front)", False), ("missing notin (front)", True),
    ("tier in ( front , back )", True),
])
def test_equality_existence_and_sets(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize("text,expected", [
    # Both sides numbers: numeric order (as strings, "9" > "10").
    ("gen<10", True), ("gen<9", False), ("gen<=9", True), ("gen<=8.5", False),
    ("gen>8", True), ("gen>9", False), ("gen>=9", True), ("gen>=10", False),
    ("gen<1e1", True), ("gen>-3", True), ("gen<9.0", False),
    # Otherwise string order.
    ("size<c", True), ("size<b", False), ("size<=b", True), ("size>a", True), ("size>=c", False),
    ("gen<a", True),  # "9" < "a" as strings
    # A missing label never satisfies a comparison, nor its opposite.
    ("missing<5", False), ("missing>=5", False),
])
def test_ordering(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1_000", " 5", "0x10"])
def test_only_plain_decimals_compare_as_numbers(value: str) -> None:
    """Values float() would accept but that are not plain numbers compare as
    strings; in particular "nan" must not satisfy both < and >=."""
    labels = {"gen": value}
    assert matches("gen<5", labels) is (value < "5")
    assert matches("gen>=5", labels) is (value >= "5")
    assert matches("gen<5", labels) != matches("gen>=5", labels)


@pytest.mark.parametrize("value", ["+9", "9.", ".9e1", "9E0", "9.000"])
def test_numbers_in_other_spellings_compare_numerically(value: str) -> None:
    assert matches(f"gen<={value}") and matches(f"gen>={value}") and not matches(f"gen<{value}")


def test_terms_are_anded_and_lists_are_ored() -> None:
    assert matches("app=web,tier=front")
    assert not matches("app=web,tier=back")
    assert matches("app=web, tier in (front, back), !missing")
    assert matches(["app=db", "tier=front"])
    assert not matches(["app=db", "tier=back"])
    assert matches(("app=db", "gen<10"))


def test_empty_selectors_match_everything() -> None:
    for empty in (None, "", [], [""], "  "):
        assert matches(empty, {}) and matches(empty)
    assert not parse_query(None) and not parse_query([])


def test_parse_builds_terms() -> None:
    sel = parse_selector("app==web, !gone, tier notin (a,b), gen>=3")
    assert sel == Selector((
        Term("app", "=", ("web",)),
        Term("gone", "!exists"),
        Term("tier", "notin", ("a", "b")),
        Term("gen", ">=", ("3",)),
    ))
    assert parse_query("app=web") == Query((Selector((Term("app", "=", ("web",)),)),))


def test_keys_may_hold_dots_slashes_dashes() -> None:
    labels = {"cosihost.dev/role-name_x": "a"}
    assert matches("cosihost.dev/role-name_x=a", labels)
    assert matches("cosihost.dev/role-name_x in (a)", labels)


def test_a_query_passes_through() -> None:
    query = parse_query("app=web")
    assert parse_query(query) is query


@pytest.mark.parametrize("bad", [
    "app in web",      # set without parentheses
    "app in (a",       # unclosed
    "=web",            # no key
    "app=web,,tier",   # empty term
    "app=web,",        # trailing comma
    ",app",
    "app web",         # no operator
    "app=(web)",       # parenthesis in a value
    "app~=web",
    "app in (a) x",
])
def test_parse_errors(bad: str) -> None:
    with pytest.raises(InvalidRequestError, match="labels"):
        parse_selector(bad)


@pytest.mark.parametrize("bad", [5, {"app": "web"}, ["app", 5], [None], b"app=web"])
def test_query_of_the_wrong_type(bad) -> None:
    with pytest.raises(InvalidRequestError, match="labels"):
        parse_query(bad)


# -- id queries: RE2, linear in the id -------------------------------------------

def test_a_pathological_id_query_answers_at_once() -> None:
    """``(a+)+$`` backtracks exponentially in ``re``; RE2 matches in linear time."""
    pattern = compile_id_regex("(a+)+$")
    assert pattern is not None
    assert pattern.search("a" * 50_000 + "b") is None
    assert pattern.search("xa") is not None


@pytest.mark.parametrize("bad, why", [
    ("(unclosed", "missing )"),
    (r"(a)\1", "backreferences"),
    ("(?=x)a", "lookaround"),
    ("a" * 2000, "longer than 1024"),
])
def test_id_queries_re2_refuses_say_why(bad: str, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(why)):
        compile_id_regex(bad)
