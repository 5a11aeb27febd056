"""Printing what the commands show, the way kubectl does.

A table is for people: times as an age (12s, 5m, 3h, 2d) and sizes in
KiB/MiB/GiB, computed when the line is printed. ``-o wide`` is the same
table with more columns and every value as stored. ``-o json`` and
``-o yaml`` print one document a script can parse whole: the object when
one named object was asked for, else a ``{"kind": "List", "items": [...]}``;
only ``--watch`` streams, one JSON object per line or one YAML document
per event.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Sequence

import click
import yaml

from ..resource import Resource
from .common import Column, TypeInfo

TABLES = ("table", "wide")
FORMATS = ("table", "wide", "json", "yaml")
HIDDEN = "(sensitive)"
GAP = "   "
LIST_KIND = "List"


class Table:
    """Aligned columns. Rows printed together line up; rows streamed later
    (``--watch``) keep the widths seen so far and widen when they must."""

    def __init__(self, headers: Sequence[str]) -> None:
        self.headers = list(headers)
        self.widths = [len(h) for h in headers]

    def _fit(self, row: Sequence[str]) -> None:
        self.widths = [max(w, len(c)) for w, c in zip(self.widths, row)]

    def _line(self, row: Sequence[str]) -> str:
        cells = [c.ljust(w) for c, w in zip(row, self.widths)]
        return GAP.join(cells).rstrip()

    def render(self, rows: Iterable[Sequence[str]], *, header: bool = True) -> list[str]:
        rows = list(rows)
        for row in rows:
            self._fit(row)
        lines = [self._line(self.headers)] if header else []
        return lines + [self._line(r) for r in rows]

    def line(self, row: Sequence[str]) -> str:
        self._fit(row)
        return self._line(row)

    def echo(self, rows: Iterable[Sequence[str]]) -> None:
        for line in self.render(rows):
            click.echo(line)


def lookup(spec: Any, path: str) -> Any:
    """Follow a dotted path into a spec (``a.b.0.c``); None where it ends.
    A leading ``spec.`` is accepted too."""
    if path.startswith("spec.") and not (isinstance(spec, dict) and "spec" in spec):
        path = path[len("spec."):]
    value = spec
    for part in path.split(".") if path else []:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(round(value, 3))
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    if isinstance(value, bytes):
        return value.hex()
    return " ".join(str(value).split())


# -- human units -------------------------------------------------------------------

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def human_duration(seconds: float) -> str:
    """kubectl's way: two units while the larger is small (5m30s, 3h20m,
    4d6h), one after (45m, 20h, 30d)."""
    s = max(0, int(seconds))
    m, h, d = s // 60, s // 3600, s // 86400
    y = d // 365
    # (while this holds, the larger unit and its count, the smaller one's)
    steps = ((s < 120, s, "s", 0, ""), (m < 10, m, "m", s % 60, "s"), (h < 3, m, "m", 0, ""),
             (h < 8, h, "h", m % 60, "m"), (h < 48, h, "h", 0, ""), (d < 8, d, "d", h % 24, "h"),
             (y < 2, d, "d", 0, ""), (y < 8, y, "y", d % 365, "d"))
    for holds, big, unit, rest, small in steps:
        if holds:
            return f"{big}{unit}" + (f"{rest}{small}" if rest else "")
    return f"{y}y"


def human_bytes(n: float) -> str:
    """Binary units, three significant figures at most: 512B, 1.5KiB, 640MiB, 15.6GiB."""
    if n < 1024:
        return f"{n:.0f}B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            break
    return f"{n:.1f}{unit}" if n < 100 else f"{n:.0f}{unit}"


def age(timestamp: Any, now: float | None = None) -> str:
    """How long ago a wall-clock timestamp was; "" when there is none."""
    if not _number(timestamp) or timestamp <= 0:
        return ""
    return human_duration((time.time() if now is None else now) - timestamp)


def formatted(value: Any, fmt: str) -> str:
    """A value for a table, in the unit its column declares."""
    if fmt == "bytes" and _number(value):
        return human_bytes(value)
    if fmt == "timestamp" and _number(value):
        return age(value)
    if fmt == "duration" and _number(value):
        return human_duration(value)
    return cell(value)


# -- documents ---------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON has no bytes: show them as text where they are text, else hex."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    return str(value)


def to_json(doc: Any, *, indent: int | None = None) -> str:
    return json.dumps(doc, default=_plain, ensure_ascii=False, indent=indent)


def to_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


def list_document(items: Sequence[Any]) -> dict[str, Any]:
    return {"kind": LIST_KIND, "items": list(items)}


def echo_document(doc: Any, output: str) -> None:
    """One whole document, as ``-o json`` or ``-o yaml`` asks."""
    if output == "json":
        click.echo(to_json(doc, indent=2))
    else:
        click.echo(to_yaml(doc), nl=False)


class View:
    """How one command shows resources of one type."""

    def __init__(self, info: TypeInfo, output: str, *, show_sensitive: bool = False,
                 watch: bool = False) -> None:
        self.info = info
        self.output = output
        self.hide = info.sensitive and not show_sensitive
        wide = output == "wide"
        headers = ["NAMESPACE", "TYPE", "ID", "VERSION"] + [c.header for c in info.print_columns]
        headers += ["OWNER", "PHASE", "FINALIZERS", "CREATED", "UPDATED"] if wide else ["AGE"]
        self.table = Table((["*"] if watch else []) + headers)
        self._docs = 0

    def doc(self, res: Resource) -> dict[str, Any]:
        doc = res.to_dict()
        if self.hide:
            doc["spec"] = HIDDEN
        return doc

    def _column(self, res: Resource, col: Column) -> str:
        if self.hide:
            return HIDDEN
        value = lookup(res.spec, col.path)
        return cell(value) if self.output == "wide" else formatted(value, col.format)

    def row(self, res: Resource) -> list[str]:
        md = res.metadata
        row = [md.namespace, self.info.short, md.id, str(md.version)]
        row += [self._column(res, col) for col in self.info.print_columns]
        if self.output == "wide":
            return row + [md.owner, md.phase, cell(list(md.finalizers)), cell(md.created), cell(md.updated)]
        return row + [age(md.created)]

    def print_all(self, resources: Sequence[Resource], *, single: bool = False) -> None:
        """``single``: one named object was asked for (JSON and YAML print
        it bare, as kubectl does); else a List."""
        if self.output in TABLES:
            self.table.echo(self.row(r) for r in resources)
        elif single and len(resources) == 1:
            echo_document(self.doc(resources[0]), self.output)
        else:
            echo_document(list_document([self.doc(r) for r in resources]), self.output)

    # -- events (``--watch``): a stream, one object per line or document --------
    def event(self, kind: str, res: Resource | None) -> None:
        if self.output in TABLES:
            if res is not None:
                mark = {"created": "+", "destroyed": "-"}.get(kind, "")
                click.echo(self.table.line([mark] + self.row(res)))
            return
        doc: dict[str, Any] = {"event": kind}
        if res is not None:
            doc.update(self.doc(res))
        if self.output == "json":
            click.echo(to_json(doc))
        else:
            self._yaml(doc)

    def header(self, bootstrap: Sequence[Resource] = ()) -> None:
        """The table's header and its first rows, aligned together."""
        if self.output in TABLES:
            self.table.echo(["+"] + self.row(r) for r in bootstrap)
        else:
            for res in bootstrap:
                self.event("created", res)

    def _yaml(self, doc: Any) -> None:
        if self._docs:
            click.echo("---")
        self._docs += 1
        click.echo(to_yaml(doc), nl=False)
