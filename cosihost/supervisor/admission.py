"""Module admission: turning what the probes found into controller slots.

A probe reports what a controller module declares, or why it could not be
loaded. Deciding what becomes of that -- a new slot started, a changed one
restarted, a declaration refused (its name taken, its outputs owned by
another, its isolation or limits invalid), a module marked failed -- is a
policy of its own, apart from running the processes once admitted. It lives
here so that :mod:`.supervision` is only about processes, and so that the
refusals and failures, and trying refusals again when what stood in their way
goes, are kept in one place.

:class:`Admission` is a mixin of :class:`~.supervision.Supervision`, which
sets up the attributes it declares and starts, restarts and removes the
processes.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidRequestError
from ..settings import Settings
from . import ratelimit
from .limits import parse_limits
from .processes import STOPPED, ProbeResult, Slot
from .registry import Declaration, Registry
from .replies import Respond
from .status import StatusWriter

log = logging.getLogger("cosihost.supervisor")


@dataclasses.dataclass
class Refusal:
    """A controller declaration that was refused, why, and under which status id."""

    result: ProbeResult
    data: dict[str, Any]
    status_id: str
    why: str = ""


def scan_changes() -> dict[str, Any]:
    """What a scan did, filled in as it goes (see :meth:`Admission.apply_probes`)."""
    return {"started": [], "restarted": [], "stopped": []}


class Admission:
    """apply_probes, standing, drop_missing, forget_module, known_digests."""

    settings: Settings
    registry: Registry
    status: StatusWriter
    slots: dict[str, Slot]
    #: Write rate limits by controller name (see ratelimit).
    buckets: dict[str, ratelimit.TokenBucket]
    #: module -> (digest, error) of the modules that could not be loaded.
    module_errors: dict[Path, tuple[str, str]]
    #: source ("module.py:Class") -> the refused declaration, kept to be
    #: admitted again once what stood in its way is gone.
    refused: dict[str, Refusal]
    # The process side, from Supervision.
    _start: Callable[[Slot], None]
    restart: Callable[[str, Respond | None], None]
    remove: Callable[[str], None]

    def apply_probes(self, results: list[ProbeResult], *, stopped: list[str] | None = None) -> dict[str, Any]:
        """Start, restart or refuse controllers from a batch of probes, in a
        stable order so the same module wins a conflict every time.

        Returns what the scan did: the controllers ``started``,
        ``restarted`` and ``stopped`` (``stopped`` begins with those of the
        modules that went, see :meth:`drop_missing`), then every controller
        still ``refused`` and module still ``failed`` after it, with
        ``reasons`` (name -> why), so a reload never looks clean while
        something is broken."""
        summary = scan_changes()
        summary["stopped"].extend(stopped or [])
        for result in sorted(results, key=lambda r: str(r.module)):
            summary["stopped"].extend(
                self._retire_module(result.module, keep={d.get("name") for d in result.declarations}))
            self._unrefuse(result.module)
            names = [str(d.get("name")) for d in result.declarations]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice and not result.error:
                result.error = f"declares controller name(s) {', '.join(map(repr, twice))} more than once"
            if result.error:
                self.module_errors[result.module] = (result.digest, result.error)
                self.status.module_failed(result.module, result.error)
                log.error("controller module %s: %s", result.module.name, result.error)
                continue
            if self.module_errors.pop(result.module, None):
                self.status.module_cleared(result.module)
            for data in result.declarations:
                self._admit(result, data, summary)
        self._admit_refused(summary, probed={r.module for r in results})
        if self.settings.isolation is not None:
            seen = [*self.slots, *(str(r.data.get("name")) for r in self.refused.values())]
            for name in self.settings.isolation.unknown_tables(seen):
                log.warning('config: [isolation.controllers."%s"] names no controller', name)
        return {**summary, **self.standing()}

    def standing(self) -> dict[str, Any]:
        """The refused controllers (by status id) and failed modules now, and why."""
        refused = {r.status_id: r.why for r in self.refused.values()}
        failed = {m.name: error for m, (_digest, error) in self.module_errors.items()}
        return {"refused": sorted(refused), "failed": sorted(failed), "reasons": {**refused, **failed}}

    def drop_missing(self, modules: list[Path]) -> list[str]:
        """Stop the controllers of modules no longer in the folder and forget
        their refusals and failures; returns the controllers stopped."""
        stopped = []
        for gone in set(self.known_digests()) - set(modules):
            for slot in [s for s in self.slots.values() if s.module == gone and s.state != STOPPED]:
                self.remove(slot.name)
                stopped.append(slot.name)
            self.forget_module(gone)
        return sorted(stopped)

    def _admit_refused(self, summary: dict[str, list[str]], *, probed: set[Path]) -> None:
        """Try again the refusals of modules that were not probed again: what
        they conflicted with may have gone or changed since."""
        for source, refusal in list(self.refused.items()):
            if refusal.result.module in probed:
                continue
            del self.refused[source]
            if refusal.status_id not in self.slots:
                self.status.removed(refusal.status_id)
            self._admit(refusal.result, refusal.data, summary, again=True)

    def _admit(self, result: ProbeResult, data: dict[str, Any], summary: dict[str, list[str]], *,
               again: bool = False) -> None:
        """Start (or restart) a declared controller, or refuse it saying why;
        ``again``: a refusal tried anew, which stays quiet if still refused."""
        source = f"{result.module.name}:{data.get('class')}"
        name = data.get("name") or source
        existing = self.slots.get(name)
        try:
            decl = Declaration.from_wire(data, source=source)
            limits, bucket = ratelimit.split(name, {**decl.limits, **self.settings.limits.get(name, {})})
            parse_limits(name, limits)
            iso = self.settings.isolation
            others = [(n, s.decl) for n, s in self.slots.items() if s.decl is not None]
            denied = iso.refusal(name, decl, others) if iso is not None else None
            if denied:
                raise InvalidRequestError(denied)
            why = self.registry.conflict(decl, replacing=name if existing and existing.module == result.module else None)
        except InvalidRequestError as exc:
            decl, why = None, str(exc)
        if existing is not None and existing.module != result.module:
            why = why or f"controller name {name!r} is taken: {source} and {existing.module.name}:{existing.cls}"
        if why:
            if not again:
                log.error("refused %s: %s", source, why)
            # The name's status belongs to the controller running under it, if any.
            status_id = name if existing is None else source
            self.status.refused(status_id, source, why)
            self.refused[source] = Refusal(result, data, status_id, why)
            return
        assert decl is not None
        self.registry.accept(decl)
        if bucket is not None:
            self.buckets[name] = bucket
        else:
            self.buckets.pop(name, None)
        self.status.definitions(decl)
        if existing is not None:
            existing.decl, existing.cls, existing.digest = decl, data["class"], result.digest
            existing.declared_inputs = list(decl.inputs)
            summary["restarted"].append(name)
            self.restart(name, None)
            return
        slot = Slot(name, result.module, data["class"], result.digest, decl, declared_inputs=list(decl.inputs))
        self.slots[name] = slot
        summary["started"].append(name)
        self._start(slot)

    def forget_module(self, module: Path) -> None:
        """A module is gone or about to be probed again: drop what it left."""
        self._unrefuse(module)
        if self.module_errors.pop(module, None):
            self.status.module_cleared(module)

    def _unrefuse(self, module: Path) -> None:
        """Forget the module's refusals (it changed or went): and their statuses."""
        for source, refusal in list(self.refused.items()):
            if refusal.result.module == module:
                del self.refused[source]
                if refusal.status_id not in self.slots:
                    self.status.removed(refusal.status_id)

    def known_digests(self) -> dict[Path, str]:
        """The digest of every module seen: running, refused or failed."""
        known = {s.module: s.digest for s in self.slots.values()}
        known.update({r.result.module: r.result.digest for r in self.refused.values()})
        known.update({m: d for m, (d, _e) in self.module_errors.items()})
        return known

    def _retire_module(self, module: Path, *, keep: set[Any]) -> list[str]:
        """Stop controllers a changed module no longer defines; returns them."""
        gone = [s.name for s in self.slots.values() if s.module == module and s.name not in keep
                and s.state != STOPPED]
        for name in gone:
            self.remove(name)
        return gone
