"""``cosihost finalizers list|remove`` and what ``delete --force`` shares
with them: the way out when a finalizer's holder will never let go.

A controller puts a finalizer on a resource to clean up before the resource
goes; a controller that is removed, refused or crash-looping never takes
it off, and the resource stays tearing down for ever. Removing a finalizer
skips that cleanup, so it is for the admin only (the supervisor's admin
token), and every removal says who held the finalizer and whether that
controller is running now, i.e. whether it may still have cleaned up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..client import Client
from ..errors import NotFoundError
from ..resource import Resource
from .common import (STATUS_NAMESPACE, STATUS_TYPE, Definitions, complete_id, complete_type, connect,
                     runtime_dir_option)
from .output import Table, cell, echo_document

#: What ``connect(admin=...)`` says a refused non-admin was trying to do.
REMOVING = "removing finalizers"


def holders(client: Client, finalizers: list[str]) -> list[dict[str, Any]]:
    """Each finalizer with the controller of that name, as its status says:
    ``state`` is None when no controller of that name is known."""
    statuses = {r.metadata.id: r.spec for r in client.list(STATUS_NAMESPACE, STATUS_TYPE)}
    out = []
    for name in finalizers:
        spec = statuses.get(name)
        spec = spec if isinstance(spec, dict) else {}
        out.append({"name": name, "state": spec.get("state"), "pid": spec.get("pid") or None})
    return out


def describe(holder: dict[str, Any]) -> str:
    """``test.Maker (controller running, pid 42)``, ``x (no controller of that name)``."""
    state, pid = holder["state"], holder["pid"]
    if state is None:
        return f"{holder['name']} (no controller of that name)"
    if state == "running":
        return f"{holder['name']} (controller running, pid {pid})"
    return f"{holder['name']} (controller {state}, not running)" if not pid else \
        f"{holder['name']} (controller {state}, pid {pid})"


def force_off(admin: Client, res: Resource, names: list[str]) -> None:
    """Remove ``names`` from ``res``'s finalizers, after a warning that names
    each holder and says whether it is running."""
    md = res.metadata
    found = holders(admin, names)
    running = [h["name"] for h in found if h["state"] == "running"]
    click.echo(f"warning: removing finalizer(s) of {md.namespace}/{md.type}/{md.id} held by "
               f"{', '.join(describe(h) for h in found)}; the cleanup they stand for is skipped"
               + (f" ({', '.join(running)} may still be doing it)" if running else ""), err=True)
    admin.remove_finalizer(md.namespace, md.type, md.id, *names)


def _target(client: Client, type_: str, id_: str, namespace: str | None) -> Resource:
    info = Definitions.load(client).resolve(type_)
    return client.get(namespace or info.default_namespace, info.type, id_)


@click.group()
def finalizers() -> None:
    """Show or remove the finalizers that hold a resource.

    \b
      cosihost finalizers list hostnameconfig hostname
      cosihost finalizers remove hostnameconfig hostname net.HostnameSpecController
    """


@finalizers.command("list")
@click.argument("type_", metavar="TYPE", shell_complete=complete_type)
@click.argument("id_", metavar="ID", shell_complete=complete_id)
@click.option("-n", "--namespace", help="Namespace (default: the type's default namespace).")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@runtime_dir_option
def list_(type_: str, id_: str, namespace: str | None, output: str, runtime_dir: Path | None) -> None:
    """The finalizers of one resource, and whether each holder is running."""
    client = connect(runtime_dir)
    res = _target(client, type_, id_, namespace)
    md = res.metadata
    found = holders(client, list(md.finalizers))
    if output == "table":
        Table(["FINALIZER", "CONTROLLER", "PID"]).echo(
            [h["name"], h["state"] or "(none)", cell(h["pid"])] for h in found)
        return
    echo_document({"metadata": {"namespace": md.namespace, "type": md.type, "id": md.id, "phase": md.phase},
                   "finalizers": found}, output)


@finalizers.command()
@click.argument("type_", metavar="TYPE", shell_complete=complete_type)
@click.argument("id_", metavar="ID", shell_complete=complete_id)
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("-n", "--namespace", help="Namespace (default: the type's default namespace).")
@runtime_dir_option
def remove(type_: str, id_: str, names: tuple[str, ...], namespace: str | None, runtime_dir: Path | None) -> None:
    """Remove finalizers NAME... from a resource (admin only). The holder's
    cleanup is skipped: for a holder that is gone or will never finish."""
    admin = connect(runtime_dir, admin=REMOVING)
    res = _target(admin, type_, id_, namespace)
    md = res.metadata
    where = f"{md.namespace}/{md.type}/{md.id}"
    missing = [n for n in names if n not in md.finalizers]
    if missing:
        has = ", ".join(md.finalizers) or "none"
        raise click.ClickException(f"{where} has no finalizer {', '.join(missing)} (it has: {has})")
    force_off(admin, res, list(dict.fromkeys(names)))
    try:
        left = admin.get(md.namespace, md.type, md.id).metadata.finalizers
    except NotFoundError:
        left = []  # someone finished deleting it meanwhile
    click.echo(f"{where} finalizer(s) removed: {', '.join(dict.fromkeys(names))}"
               + (f"; still held by {', '.join(left)}" if left else ""))
