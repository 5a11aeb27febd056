"""Figures and how they are printed: JSON lines for machines, a table for people."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import IO, Iterable

#: The keys of every JSON line, in this order.
FIELDS = ("name", "value", "unit", "baseline", "ratio", "target")


@dataclasses.dataclass
class Figure:
    """One measured number.

    ``baseline`` is what the value is compared with (a reference
    measurement or a theoretical floor, said in ``note``); ``ratio`` is
    ``value / baseline`` unless given; ``target`` is the value aimed for.
    ``note`` says how the figure was measured; it goes to the table only.
    ``ok`` is False when the figure shows a failure (say, lost events): the
    run then exits non-zero. Neither ``note`` nor ``ok`` is in the JSON line.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: float | None = None
    note: str = ""
    ok: bool | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline:
            self.ratio = self.value / self.baseline

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "ratio": _round(self.ratio),
            "target": _round(self.target),
        }


def _round(x: float | None, digits: int = 6) -> float | int | None:
    """Keep ``digits`` significant digits; ints stay ints."""
    if x is None or isinstance(x, int) or not math.isfinite(x) or x == 0:
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def print_json(figures: Iterable[Figure], out: IO[str] = sys.stdout) -> None:
    for fig in figures:
        out.write(json.dumps(fig.as_dict()) + "\n")
    out.flush()


def _human(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int) or (abs(x) >= 1000 and float(x).is_integer()):
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def print_table(figures: Iterable[Figure], out: IO[str] = sys.stdout) -> None:
    rows = [("name", "value", "unit", "baseline", "ratio", "target", "note")]
    for f in figures:
        note = f"FAILED: {f.note}" if f.ok is False else f.note
        rows.append((f.name, _human(f.value), f.unit, _human(f.baseline), _human(f.ratio),
                     _human(f.target), note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {1, 3, 4, 5}
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.write("  ".join(cells + [row[-1]]).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "  " + "-" * 4 + "\n")
    out.flush()
