"""Printing resources: aligned tables, JSON lines, YAML documents."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import click
import yaml

from ..resource import Resource
from .common import TypeInfo

FORMATS = ("table", "json", "yaml")
HIDDEN = "(sensitive)"
GAP = "   "


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


def _plain(value: Any) -> Any:
    """JSON has no bytes: show them as text where they are text, else hex."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    return str(value)


def to_json(doc: Any) -> str:
    return json.dumps(doc, default=_plain, ensure_ascii=False)


def to_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


class View:
    """How one command shows resources of one type."""

    def __init__(self, info: TypeInfo, output: str, *, show_sensitive: bool = False,
                 watch: bool = False) -> None:
        self.info = info
        self.output = output
        self.hide = info.sensitive and not show_sensitive
        headers = ["NAMESPACE", "TYPE", "ID", "VERSION"] + [h for h, _ in info.print_columns]
        self.table = Table((["*"] if watch else []) + headers)
        self._docs = 0

    def doc(self, res: Resource) -> dict[str, Any]:
        doc = res.to_dict()
        if self.hide:
            doc["spec"] = HIDDEN
        return doc

    def row(self, res: Resource) -> list[str]:
        md = res.metadata
        cols = [HIDDEN if self.hide else cell(lookup(res.spec, path)) for _, path in self.info.print_columns]
        return [md.namespace, self.info.short, md.id, str(md.version)] + cols

    def print_all(self, resources: Sequence[Resource]) -> None:
        if self.output == "table":
            for line in self.table.render(self.row(r) for r in resources):
                click.echo(line)
        elif self.output == "json":
            for res in resources:
                click.echo(to_json(self.doc(res)))
        else:
            for res in resources:
                self._yaml(self.doc(res))

    # -- events (``--watch``) --------------------------------------------------
    def event(self, kind: str, res: Resource | None) -> None:
        if self.output == "table":
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
        if self.output == "table":
            for line in self.table.render(["+"] + self.row(r) for r in bootstrap):
                click.echo(line)
        else:
            for res in bootstrap:
                self.event("created", res)

    def _yaml(self, doc: Any) -> None:
        if self._docs:
            click.echo("---")
        self._docs += 1
        click.echo(to_yaml(doc), nl=False)
