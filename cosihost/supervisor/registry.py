"""Controller declarations and the rules between them.

A declaration is checked on its own (names, kinds) and against every other
accepted declaration (one controller per name; an exclusive output type has
one writer; exclusive and shared never mix). A refusal names both parties,
so the person reading the log knows which two modules disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ..controller import INPUT_KINDS, OUTPUT_KINDS, Input, Output
from .. import capabilities
from ..errors import InvalidRequestError
from ..resource import check_name

SUPERVISOR = "cosihost.Supervisor"


@dataclasses.dataclass
class Declaration:
    name: str
    inputs: list[Input]
    outputs: list[Output]
    source: str = ""  # "module.py:Class", for messages
    limits: dict[str, Any] = dataclasses.field(default_factory=dict)
    definitions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: A QController's primary and mapped inputs and concurrency (shown, not enforced).
    queue: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The Linux capabilities it keeps when it runs as its own user.
    capabilities: list[str] = dataclasses.field(default_factory=list)
    #: The user it asks to run as (a passwd account); "": a dynamic uid.
    user: str = ""

    @classmethod
    def from_wire(cls, data: dict[str, Any], *, source: str = "") -> "Declaration":
        try:
            inputs = [Input.from_wire(i) for i in data.get("inputs", [])]
            outputs = [Output.from_wire(o) for o in data.get("outputs", [])]
            limits = dict(data.get("limits") or {})
            definitions = list(data.get("definitions") or [])
            queue = dict(data.get("queue") or {})
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"declaration of {data.get('name')!r}: {exc}") from None
        caps = capabilities.checked(data.get("capabilities") or [], who=str(data.get("name")))
        user = data.get("user", "")
        if not isinstance(user, str):
            raise InvalidRequestError(f"declaration of {data.get('name')!r}: user must be a user name, not {user!r}")
        decl = cls(data.get("name", ""), inputs, outputs, source, limits, definitions, queue, caps, user.strip())
        decl.check()
        return decl

    def check(self) -> None:
        check_name("controller name", self.name)
        for i in self.inputs:
            check_name("input namespace", i.namespace)
            check_name("input type", i.type)
            if i.id is not None:
                check_name("input id", i.id)
            if i.kind not in INPUT_KINDS:
                raise InvalidRequestError(
                    f"{self.name}: input {i.type} has kind {i.kind!r}; use one of {', '.join(INPUT_KINDS)}")
        seen = set()
        for o in self.outputs:
            check_name("output type", o.type)
            if o.kind not in OUTPUT_KINDS:
                raise InvalidRequestError(
                    f"{self.name}: output {o.type} has kind {o.kind!r}; use one of {', '.join(OUTPUT_KINDS)}")
            if o.type in seen:
                raise InvalidRequestError(f"{self.name}: output {o.type} is declared twice")
            seen.add(o.type)

    def same_shape(self, other: "Declaration") -> bool:
        return (self.name, self.inputs, self.outputs) == (other.name, other.inputs, other.outputs)

    def output(self, type: str) -> Output | None:
        return next((o for o in self.outputs if o.type == type), None)

    def reads(self, namespace: str, type: str) -> bool:
        return (any(i.namespace == namespace and i.type == type for i in self.inputs)
                or self.output(type) is not None)

    def holds_strong(self, namespace: str, type: str) -> bool:
        return any(i.namespace == namespace and i.type == type and i.kind == "strong"
                   for i in self.inputs)

    def describe(self) -> str:
        return f"{self.name} ({self.source})" if self.source else self.name


class Registry:
    """Accepted declarations, by controller name."""

    def __init__(self) -> None:
        self.accepted: dict[str, Declaration] = {}

    def conflict(self, decl: Declaration, *, replacing: str | None = None) -> str | None:
        """Why ``decl`` cannot join (naming both parties), or None."""
        for other in self.accepted.values():
            if other.name == replacing:
                continue
            if other.name == decl.name:
                return f"controller name {decl.name!r} is taken: {decl.describe()} and {other.describe()}"
            for out in decl.outputs:
                theirs = other.output(out.type)
                if theirs is None:
                    continue
                if out.kind == "exclusive" or theirs.kind == "exclusive":
                    return (f"output {out.type} is {out.kind} in {decl.describe()} but "
                            f"{theirs.kind} in {other.describe()}; an exclusive output has one controller")
        return None

    def accept(self, decl: Declaration) -> None:
        self.accepted[decl.name] = decl

    def remove(self, name: str) -> None:
        self.accepted.pop(name, None)

    def exclusive_owner(self, type: str) -> str | None:
        for decl in self.accepted.values():
            out = decl.output(type)
            if out is not None and out.kind == "exclusive":
                return decl.name
        return None

    def all(self) -> Iterable[Declaration]:
        return self.accepted.values()
