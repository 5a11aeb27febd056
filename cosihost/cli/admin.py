"""``cosihost controllers``, ``restart``, ``reload`` and ``graph``: the
supervisor's view of its controllers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import click

from ..client import Client
from ..resource import Resource, unpack
from .common import complete, connect, runtime_dir_option
from .output import FORMATS, TABLES, Table, age, cell, echo_document, formatted, list_document, lookup

#: Restart and reload answer once the work is done: give them time.
LONG_TIMEOUT = 60.0


def _statuses(client: Client) -> list[Resource]:
    return sorted((unpack(b) for b in client.call("controllers")), key=lambda r: r.metadata.id)


def complete_controller(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return complete(ctx, incomplete, lambda client: [r.metadata.id for r in _statuses(client)])


# -- controllers -------------------------------------------------------------------

COLUMNS = ("NAME", "STATE", "PID", "RESTARTS", "UPTIME", "CPU", "MEMORY", "LAST EXIT", "REASON")
WIDE_COLUMNS = ("NAME", "STATE", "PID", "RESTARTS", "STARTED", "CPU SECONDS", "RSS BYTES", "LAST EXIT",
                "REASON", "MODULE", "CLASS", "LIMITS", "ISOLATION")


def controller_row(res: Resource, *, wide: bool = False) -> list[str]:
    """One controller's line; UPTIME is computed now, from when its
    process started, so it is right however old the status is."""
    spec = res.spec if isinstance(res.spec, dict) else {}
    cpu, rss = lookup(spec, "usage.cpu_seconds"), lookup(spec, "usage.rss_bytes")
    head = [res.metadata.id, cell(spec.get("state")), cell(spec.get("pid")), cell(spec.get("restarts"))]
    tail = [cell(lookup(spec, "last_exit.reason")), cell(spec.get("reason"))]
    if wide:
        return head + [cell(spec.get("started")), cell(cpu), cell(rss)] + tail + [
            cell(spec.get("module")), cell(spec.get("class")), cell(spec.get("limits") or None),
            isolation_cell(spec.get("isolation"))]
    return head + [age(spec.get("started") if spec.get("pid") else None),
                   f"{cpu:.2f}s" if isinstance(cpu, (int, float)) else "",
                   formatted(rss, "bytes")] + tail


def isolation_cell(isolation: object) -> str:
    """``uid N`` (a dynamic user) or ``NAME (uid N)`` (a named one; ``NAME
    (uid N, shared)`` when the config runs other controllers as it too), with
    the capabilities it keeps; ``none`` when the controller runs as the
    supervisor's user."""
    if not isinstance(isolation, dict):
        return ""
    if "uid" not in isolation:
        return "none"
    caps = isolation.get("capabilities") or []
    shared = ", shared" if isolation.get("shared_with") else ""
    uid = f"uid {isolation['uid']}"
    who = f"{isolation['user']} ({uid}{shared})" if isolation.get("user") else uid
    return who + (f" +{','.join(map(str, caps))}" if caps else "")


@click.command()
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table; wide (more columns, values as stored); json or yaml (a List of the "
                   "ControllerStatuses resources).")
@runtime_dir_option
def controllers(output: str, runtime_dir: Path | None) -> None:
    """The supervisor's controllers (its ControllerStatuses resources)."""
    client = connect(runtime_dir)
    statuses = _statuses(client)
    if output not in TABLES:
        echo_document(list_document([r.to_dict() for r in statuses]), output)
        return
    wide = output == "wide"
    Table(WIDE_COLUMNS if wide else COLUMNS).echo(controller_row(r, wide=wide) for r in statuses)


# -- restart / reload ------------------------------------------------------------------


@click.command()
@click.argument("name", shell_complete=complete_controller)
@runtime_dir_option
def restart(name: str, runtime_dir: Path | None) -> None:
    """Restart one controller's process; the others keep running."""
    client = connect(runtime_dir, timeout=LONG_TIMEOUT, retries=0)
    result = client.call("restart", name=name)
    pid = result.get("pid") if isinstance(result, dict) else None
    click.echo(f"restarted {name}" + (f" (pid {pid})" if pid else ""))


#: What a reload did, in the order it is told.
RELOAD_KEYS = ("started", "restarted", "stopped", "refused", "failed")


def reload_lines(summary: dict[str, Any]) -> list[str]:
    """``started: a, b`` and so on; each refused controller or failed module
    on a line of its own, with why."""
    reasons = summary.get("reasons") or {}
    lines = []
    for key in RELOAD_KEYS:
        names = [str(n) for n in summary.get(key) or []]
        if key in ("refused", "failed"):
            lines += [f"{key}: {n}" + (f": {reasons[n]}" if reasons.get(n) else "") for n in names]
        elif names:
            lines.append(f"{key}: {', '.join(names)}")
    return lines


@click.command()
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
@runtime_dir_option
def reload(output: str, runtime_dir: Path | None) -> None:
    """Rescan the controllers folder: start new modules, restart changed
    ones, stop removed ones. Says what it did, and which controllers are
    refused and which modules failed (then it exits 1)."""
    client = connect(runtime_dir, timeout=LONG_TIMEOUT, retries=0)
    summary = client.call("reload") or {}
    if output == "text":
        click.echo("\n".join(reload_lines(summary)) or "reloaded: nothing changed")
    else:
        echo_document(summary, output)
    problems = [f"{len(summary.get(key) or [])} {what}" for key, what in
                (("refused", "controller(s) refused"), ("failed", "module(s) failed")) if summary.get(key)]
    if problems:
        raise click.ClickException(f"reload: {' and '.join(problems)}")


# -- graph -----------------------------------------------------------------------------

INPUT_STYLE = {
    "strong": 'style=bold, penwidth=2, color="#1d4ed8"',
    "weak": 'style=dashed, color="#1d4ed8"',
    "destroy-ready": 'style=dotted, penwidth=2, color="#1d4ed8"',
}
OUTPUT_STYLE = {
    "exclusive": 'style=solid, penwidth=2, color="#111827"',
    "shared": 'style=solid, color="#6b7280", arrowhead=onormal',
}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_graph(decls: Iterable[dict[str, Any]]) -> str:
    """Graphviz dot: controllers are boxes, resource types ellipses; an input
    is an edge type -> controller (bold: strong, dashed: weak, dotted:
    destroy-ready; a queue controller, green, labels its inputs primary or
    mapped and shows its concurrency), an output an edge controller -> type (bold: exclusive,
    grey with a hollow head: shared)."""
    lines = ["digraph cosihost {", "  rankdir=LR;",
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    types: set[str] = set()
    edges: list[str] = []
    for decl in sorted(decls, key=lambda d: str(d.get("name"))):
        name = str(decl.get("name"))
        refused = decl.get("state") == "refused"
        raw = decl.get("queue")
        queue: dict[str, Any] = raw if isinstance(raw, dict) else {}
        roles = {**{tuple(k): "primary " for k in queue.get("primary") or []},
                 **{tuple(k): "mapped " for k in queue.get("mapped") or []}}
        fill = "#dcfce7" if queue else "#e0e7ff"
        style = 'style="rounded,dashed", color="#b91c1c"' if refused else f'style="rounded,filled", fillcolor="{fill}"'
        text = name + (f" [queue x{queue.get('concurrency', 1)}]" if queue else "") + (" (refused)" if refused else "")
        lines.append(f'  {_q("c:" + name)} [shape=box, {style}, label={_q(text)}];')
        for ns, typ, kind, rid in decl.get("inputs") or []:
            types.add(typ)
            where = f"{ns}/{rid}" if rid else ns
            role = roles.get((ns, typ), "")
            edges.append(f'  {_q("t:" + typ)} -> {_q("c:" + name)} '
                         f'[{INPUT_STYLE.get(kind, "")}, label={_q(f"{role}{kind} ({where})")}];')
        for typ, kind in decl.get("outputs") or []:
            types.add(typ)
            edges.append(f'  {_q("c:" + name)} -> {_q("t:" + typ)} [{OUTPUT_STYLE.get(kind, "")}, label={_q(kind)}];')
    for typ in sorted(types):
        lines.append(f"  {_q('t:' + typ)} [shape=ellipse, label={_q(typ)}];")
    return "\n".join(lines + edges + ["}"]) + "\n"


def _probe_declarations(directory: Path) -> list[dict[str, Any]]:
    """Declarations straight from the modules of a folder (each imported in
    a child process, as the supervisor does), with no supervisor running."""
    from ..supervisor.processes import discover, probe

    modules = discover(directory)
    if not modules:
        raise click.ClickException(f"no controller modules in {directory}")
    return admitted([probe(module, timeout=LONG_TIMEOUT) for module in modules])


def admitted(results: list[Any]) -> list[dict[str, Any]]:
    """The declarations of probed modules as the supervisor would take
    them: a module that failed, or a declaration that conflicts with one
    taken before it (modules in name order, as the supervisor scans them),
    is a refused node, as in the live graph; each is told on stderr."""
    from ..errors import InvalidRequestError
    from ..supervisor.registry import Declaration, Registry
    from ..supervisor.status import supervisor_declaration

    registry = Registry()
    registry.accept(supervisor_declaration())
    decls: list[dict[str, Any]] = []
    for result in sorted(results, key=lambda r: str(r.module)):
        if result.error:
            decls.append(_refused(result.module.name, result.error))
            continue
        for data in result.declarations:
            source = f"{result.module.name}:{data.get('class')}"
            name = str(data.get("name") or source)
            try:
                decl = Declaration.from_wire(data, source=source)
                why = registry.conflict(decl)
            except InvalidRequestError as exc:
                why = str(exc)
            if why:
                # A name taken by a running controller is that one's node.
                decls.append(_refused(source if name in registry.accepted else name, why))
                continue
            registry.accept(decl)
            decls.append(data)
    return decls


def _refused(name: str, why: str) -> dict[str, Any]:
    click.echo(f"warning: {name} refused: {why}", err=True)
    return {"name": name, "state": "refused", "reason": why}


@click.command()
@click.option("--controllers", "controllers_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Read the declarations from this folder's modules instead of a running supervisor.")
@runtime_dir_option
def graph(controllers_dir: Path | None, runtime_dir: Path | None) -> None:
    """The controller/resource dependency graph, as Graphviz dot.

    \b
      cosihost graph | dot -Tpng -o graph.png     (dot: apt-get install graphviz)
    """
    if controllers_dir is not None:
        decls = _probe_declarations(controllers_dir)
    else:
        client = connect(runtime_dir)
        decls = [dict(r.spec, name=r.metadata.id) for r in _statuses(client) if isinstance(r.spec, dict)]
    click.echo(render_graph(decls), nl=False)
