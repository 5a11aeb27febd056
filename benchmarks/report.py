"""Figures and how they are printed: JSON lines for machines, a table for people."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import sys
from typing import IO, Any, Iterable

#: The keys of every JSON line, in this order.
FIELDS = ("name", "value", "unit", "baseline", "ratio", "target")

#: How a figure is held against its target: what is compared, and how.
GOALS = {
    "value<=": ("value", operator.le), "value<": ("value", operator.lt), "value>=": ("value", operator.ge),
    "ratio<=": ("ratio", operator.le), "ratio>=": ("ratio", operator.ge),
}


@dataclasses.dataclass
class Figure:
    """One measured number.

    ``baseline`` is what the value is compared with (a reference
    measurement or a theoretical floor, said in ``note``); ``ratio`` is
    ``value / baseline`` unless given; ``target`` is the value aimed for.
    ``note`` says how the figure was measured; it goes to the table only.
    ``ok`` is False when the figure shows a failure (say, lost events, or
    no value at all: ``value`` None): the run then exits non-zero. ``goal``
    says what ``target`` bounds (a key of :data:`GOALS`, e.g. ``"ratio>="``);
    a missed target is reported, not a failure. ``samples`` (named lists of
    raw measurements) is for plots. Only the FIELDS are in the JSON line.
    """

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: float | None = None
    note: str = ""
    ok: bool | None = None
    goal: str = ""
    samples: dict[str, list[float]] | None = dataclasses.field(default=None, repr=False)
    #: Why the figure could not be taken on this machine (a missing tool):
    #: reported as skipped, not as a failure.
    skipped: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline and self.value is not None:
            self.ratio = self.value / self.baseline
        if self.goal and self.goal not in GOALS:
            raise ValueError(f"goal {self.goal!r} is not one of {', '.join(GOALS)}")
        if self.value is None and self.ok is None and not self.skipped:
            self.ok = False

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is no target."""
        if self.target is None or not self.goal:
            return None
        what, compare = GOALS[self.goal]
        measured = self.value if what == "value" else self.ratio
        return measured is not None and math.isfinite(measured) and compare(measured, self.target)

    def describe_target(self) -> str:
        if self.target is None:
            return "-"
        if not self.goal:
            return _human(self.target)
        what, _ = GOALS[self.goal]
        op = self.goal[len(what):]
        return f"{what if what == 'ratio' else ''} {op} {_human(self.target)}".strip()

    def as_dict(self) -> dict[str, object]:
        line: dict[str, object] = {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "ratio": _round(self.ratio),
            "target": _round(self.target),
        }
        if self.skipped:
            line["skipped"] = self.skipped
        return line


class Skipped(Exception):
    """Raised by a benchmark whose figures need a tool this machine lacks."""

    def __init__(self, names: Iterable[str], reason: str) -> None:
        super().__init__(reason)
        self.figures = [Figure(name, None, "", skipped=reason, note=f"skipped: {reason}") for name in names]


def _round(x: Any, digits: int = 6) -> Any:
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


def print_table(figures: Iterable[Figure], out: IO[str] = sys.stdout, *, markdown: bool = False) -> None:
    rows = [("name", "value", "unit", "baseline", "ratio", "target", "met", "note")]
    for f in figures:
        note = f"FAILED: {f.note}" if f.ok is False else f.note  # a skipped figure's note says why
        met = {None: "", True: "yes", False: "NO"}[f.met]
        rows.append((f.name, _human(f.value), f.unit, _human(f.baseline), _human(f.ratio),
                     f.describe_target(), met, note))
    if markdown:
        for n, row in enumerate(rows):
            out.write("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |\n")
            if n == 0:
                out.write("|" + "|".join("---:" if i in (1, 3, 4) else "---" for i in range(len(row))) + "|\n")
        out.flush()
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {1, 3, 4, 5}
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.write("  ".join(cells + [row[-1]]).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "  " + "-" * 4 + "\n")
    out.flush()
