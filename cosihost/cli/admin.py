"""``cosihost controllers``, ``restart``, ``reload`` and ``graph``: the
supervisor's view of its controllers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import click

from ..client import Client
from ..resource import Resource, unpack
from .common import complete, connect, runtime_dir_option
from .output import Table, cell, lookup, to_json

#: Restart and reload answer once the work is done: give them time.
LONG_TIMEOUT = 60.0


def _statuses(client: Client) -> list[Resource]:
    return sorted((unpack(b) for b in client.call("controllers")), key=lambda r: r.metadata.id)


def complete_controller(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return complete(ctx, incomplete, lambda client: [r.metadata.id for r in _statuses(client)])


# -- controllers -------------------------------------------------------------------


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return ""


COLUMNS = ("NAME", "STATE", "PID", "RESTARTS", "UPTIME", "CPU", "MEMORY", "LAST EXIT", "REASON")


def controller_row(res: Resource) -> list[str]:
    spec = res.spec if isinstance(res.spec, dict) else {}
    cpu = lookup(spec, "usage.cpu_seconds")
    return [res.metadata.id, cell(spec.get("state")), cell(spec.get("pid") or ""), cell(spec.get("restarts")),
            _duration(spec.get("uptime")), f"{cpu:.2f}s" if isinstance(cpu, (int, float)) else "",
            _bytes(lookup(spec, "usage.rss_bytes")), cell(lookup(spec, "last_exit.reason")),
            cell(spec.get("reason"))]


@click.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@runtime_dir_option
def controllers(output: str, runtime_dir: Path | None) -> None:
    """The supervisor's controllers (its ControllerStatuses resources)."""
    client = connect(runtime_dir)
    statuses = _statuses(client)
    if output == "json":
        for res in statuses:
            click.echo(to_json(res.to_dict()))
        return
    for line in Table(COLUMNS).render(controller_row(r) for r in statuses):
        click.echo(line)


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


@click.command()
@runtime_dir_option
def reload(runtime_dir: Path | None) -> None:
    """Rescan the controllers folder: start new modules, restart changed
    ones, stop removed ones."""
    client = connect(runtime_dir, timeout=LONG_TIMEOUT, retries=0)
    summary = client.call("reload")
    lines = [f"{what}: {', '.join(names)}" for what, names in (summary or {}).items() if names]
    click.echo("\n".join(lines) if lines else "reloaded: nothing changed")


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
    decls = []
    for module in modules:
        result = probe(module, timeout=LONG_TIMEOUT)
        if result.error:
            raise click.ClickException(f"{module.name}: {result.error}")
        decls.extend(result.declarations)
    return decls


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
