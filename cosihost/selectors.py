"""Label selectors: a kubectl-like string parsed once into match terms.

A selector string is comma-separated terms that must all hold (AND); a list
of selector strings matches when any of them does (OR), like COSI's
``LabelQueries``. Parsing happens where the query enters (the state API or
the wire), so a bad selector is an InvalidRequestError, never a failed match.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping, Protocol, Sequence

from .errors import InvalidRequestError

_KEY = r"[A-Za-z0-9_./-]+"
_VALUE = r"[^,()\s]*"
_TERM_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^)]*)\)$"), "set"),
    (re.compile(rf"^({_KEY})\s*(==|=|!=|<=|>=|<|>)\s*({_VALUE})$"), "cmp"),
    (re.compile(rf"^(!?)\s*({_KEY})$"), "exists"),
]


#: A plain decimal number. Stricter than ``float()``, which would also take
#: "nan" (unordered: it would make ``<=`` and ``>=`` both true), "inf",
#: "1_000" and surrounding whitespace, none of which read as numbers in a label.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _as_number(value: str) -> float | None:
    if not _NUMBER.fullmatch(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _less(a: str, b: str) -> bool:
    """Numeric when both sides are numbers, else string order."""
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return na < nb
    return a < b


_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "<": _less,
    "<=": lambda a, b: not _less(b, a),
    ">": lambda a, b: _less(b, a),
    ">=": lambda a, b: not _less(a, b),
}


@dataclasses.dataclass(frozen=True)
class Term:
    """One condition on one label key."""

    key: str
    op: str  # "=", "!=", "exists", "!exists", "in", "notin", "<", "<=", ">", ">="
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not (present and value == self.values[0])
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not (present and value in self.values)
        return present and _COMPARE[self.op](value, self.values[0])


@dataclasses.dataclass(frozen=True)
class Selector:
    """Terms that must all hold."""

    terms: tuple[Term, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(term.matches(labels) for term in self.terms)


@dataclasses.dataclass(frozen=True)
class Query:
    """Selectors of which at least one must hold; no selectors matches all."""

    selectors: tuple[Selector, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.selectors or any(s.matches(labels) for s in self.selectors)

    def __bool__(self) -> bool:
        return bool(self.selectors)


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_term(text: str) -> Term:
    for pattern, kind in _TERM_PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        if kind == "set":
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            return Term(m.group(1), m.group(2), values)
        if kind == "cmp":
            op = "=" if m.group(2) == "==" else m.group(2)
            return Term(m.group(1), op, (m.group(3),))
        return Term(m.group(2), "!exists" if m.group(1) else "exists")
    raise InvalidRequestError(f"labels: cannot parse selector term {text!r}")


def parse_selector(text: str) -> Selector:
    if not isinstance(text, str):
        raise InvalidRequestError(f"labels: a selector must be a string, not {type(text).__name__}")
    terms = [t for t in _split_terms(text)]
    if terms == [""]:
        return Selector(())
    if any(not t for t in terms):
        raise InvalidRequestError(f"labels: empty term in selector {text!r}")
    return Selector(tuple(_parse_term(t) for t in terms))


def parse_query(labels: str | Sequence[str] | Query | None) -> Query:
    """Accept None, one selector string, a list of them (ORed), or a Query."""
    if labels is None:
        return Query()
    if isinstance(labels, Query):
        return labels
    if isinstance(labels, str):
        return Query((parse_selector(labels),))
    if isinstance(labels, (list, tuple)):
        return Query(tuple(parse_selector(s) for s in labels))
    raise InvalidRequestError(f"labels: expected a selector string or a list of them, not {labels!r}")


#: Longest id query accepted; ids themselves are at most MAX_NAME_LENGTH.
MAX_ID_REGEX_LENGTH = 1024
#: Memory RE2 may use for one compiled query.
ID_REGEX_MEMORY = 8 << 20


def compile_id_regex(id_regex: str | None) -> IdPattern | None:
    """Compile an id query with RE2, whose matching time is linear in the id.

    The supervisor runs the queries clients send, in its own loop: with a
    backtracking engine such as ``re``, a pattern like ``(a+)+$`` takes time
    exponential in the id and would stall every controller. RE2 refuses the
    few constructs it cannot match in linear time (backreferences,
    lookaround); the error says so.
    """
    if id_regex is None:
        return None
    if not isinstance(id_regex, str):
        raise InvalidRequestError("id_regex must be a string")
    if len(id_regex) > MAX_ID_REGEX_LENGTH:
        raise InvalidRequestError(f"id_regex is longer than {MAX_ID_REGEX_LENGTH} characters")
    import re2  # here, not at the top: most controller processes never need it

    options = re2.Options()
    options.log_errors = False
    options.max_mem = ID_REGEX_MEMORY
    try:
        pattern: IdPattern = re2.compile(id_regex, options)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidRequestError(f"id_regex: {why} (RE2 syntax: no backreferences or lookaround)") from None
    return pattern


class IdPattern(Protocol):
    """A compiled id query: ``search`` as in ``re``."""

    def search(self, text: str) -> object: ...
