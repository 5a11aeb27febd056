"""``cosihost get``, ``apply`` and ``delete``: resources from the user's side."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import yaml

from ..client import Client
from ..errors import ConflictError, NotFoundError, OwnerConflictError, PhaseConflictError
from ..resource import Resource
from ..state.txn import Transaction
from .common import Definitions, Pinger, TypeInfo, complete_id, complete_type, connect, runtime_dir_option
from .finalizers import force_off
from .output import FORMATS, LIST_KIND, View

def _resolve(client: Client, type_: str) -> TypeInfo:
    return Definitions.load(client).resolve(type_)


# -- get -------------------------------------------------------------------------


@click.command()
@click.argument("type_", metavar="TYPE", shell_complete=complete_type)
@click.argument("id_", metavar="[ID]", required=False, shell_complete=complete_id)
@click.option("-n", "--namespace", help="Namespace (default: the type's default namespace).")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table; wide (more columns, values as stored); json or yaml (one document: the "
                   "resource, or a List of them; with --watch, one per event).")
@click.option("-l", "--selector", "selectors", multiple=True, metavar="SELECTOR",
              help="Label selector, e.g. 'kind=ether,!virtual'; repeat to OR several.")
@click.option("-w", "--watch", is_flag=True, help="Keep printing changes (+ created, - destroyed).")
@click.option("--show-sensitive", is_flag=True, help="Show the spec of sensitive types.")
@runtime_dir_option
def get(type_: str, id_: str | None, namespace: str | None, output: str, selectors: tuple[str, ...],
        watch: bool, show_sensitive: bool, runtime_dir: Path | None) -> None:
    """Show resources of TYPE (a full type name or an alias), or the one with ID.

    \b
      cosihost get links
      cosihost get links lo -o yaml
      cosihost get links -o json | jq '.items[].metadata.id'
      cosihost get links -l kind=ether --watch
    """
    if id_ is not None and selectors:
        raise click.UsageError("-l selects among many resources; it does not combine with an ID")
    client = connect(runtime_dir)
    info = _resolve(client, type_)
    ns = namespace or info.default_namespace
    labels: Any = list(selectors) if len(selectors) > 1 else (selectors[0] if selectors else None)
    view = View(info, output, show_sensitive=show_sensitive, watch=watch)
    if watch:
        _watch(client, view, ns, info.type, id_, labels)
        return
    if id_ is not None:
        view.print_all([client.get(ns, info.type, id_)], single=True)
        return
    items = client.list(ns, info.type, labels=labels)
    view.print_all(items)
    if not items and not info.defined:
        click.echo(f"note: no resources, and no resource definition names type {info.type!r}", err=True)


def _watch(client: Client, view: View, ns: str, type: str, id: str | None, labels: Any) -> None:
    if id is not None:
        watch = client.watch(ns, type, id)
        bootstrapping = False
    else:
        watch = client.watch_kind(ns, type, bootstrap=True, labels=labels)
        bootstrapping = True
    first: list[Resource] = []
    pinger = Pinger(client)
    if not bootstrapping:
        view.header()
    try:
        with watch:
            while True:
                event = watch.next(timeout=2.0)
                if event is None:
                    if not pinger.alive():
                        raise click.ClickException(f"the supervisor at {client.runtime_dir} stopped answering")
                    continue
                if event.kind == "error":
                    raise click.ClickException(f"watch ended: {event.error}")
                if bootstrapping:
                    if event.kind == "bootstrapped":
                        bootstrapping = False
                        view.header(first)
                        view.event("bootstrapped", None)
                    elif event.resource is not None:
                        first.append(event.resource)
                    continue
                if (id is not None and event.kind == "destroyed" and event.resource is not None
                        and event.resource.metadata.version == 0):
                    continue  # the tombstone of a resource that does not exist yet
                view.event(event.kind, event.resource)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


# -- apply -----------------------------------------------------------------------

#: Metadata the store sets; accepted (so `get -o yaml` output applies again) and ignored.
READ_ONLY = {"version", "owner", "phase", "finalizers", "created", "updated"}


def load_documents(path: str) -> list[Any]:
    """The resources in a YAML or JSON file ("-" is stdin): one or many
    documents, each a resource, a list of resources or a List document
    (``{"kind": "List", "items": [...]}``, as ``get -o yaml`` prints)."""
    try:
        with click.open_file(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not UTF-8 text") from None
    try:
        docs = [json.loads(text)]
    except ValueError:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{path}: not valid YAML or JSON: {' '.join(str(exc).split())}") from None
    items: list[Any] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == LIST_KIND and isinstance(doc.get("items"), list):
            doc = doc["items"]
        items.extend(doc if isinstance(doc, list) else [doc])
    if not items:
        raise click.ClickException(f"{path}: no resources in it")
    return items


@dataclasses.dataclass
class Wanted:
    """A resource as a file asks for it; labels or annotations left out
    (None) keep what is stored."""

    namespace: str
    type: str
    id: str
    spec: Any
    labels: dict[str, str] | None
    annotations: dict[str, str] | None

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.type}/{self.id}"


def parse_resource(item: Any, defs: Definitions, where: str) -> Wanted:
    if not isinstance(item, dict) or not isinstance(item.get("metadata"), dict):
        raise click.ClickException(f"{where}: a resource is a mapping with 'metadata' (and 'spec')")
    unknown = set(item) - {"metadata", "spec"}
    if unknown:
        raise click.ClickException(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    md = item["metadata"]
    unknown = set(md) - ({"namespace", "type", "id", "labels", "annotations"} | READ_ONLY)
    if unknown:
        raise click.ClickException(f"{where}: unknown metadata field(s) {', '.join(sorted(map(str, unknown)))}")
    for field in ("type", "id"):
        if not isinstance(md.get(field), str) or not md[field]:
            raise click.ClickException(f"{where}: metadata.{field} is required (a string)")
    info = defs.resolve(md["type"])
    ns = md.get("namespace") or info.default_namespace
    if not isinstance(ns, str):
        raise click.ClickException(f"{where}: metadata.namespace must be a string")
    for field in ("labels", "annotations"):
        value = md.get(field)
        if value is not None and not (isinstance(value, dict)
                                      and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            raise click.ClickException(f"{where}: metadata.{field} must map strings to strings")
    return Wanted(ns, info.type, md["id"], item.get("spec"), md.get("labels"), md.get("annotations"))


def apply_one(client: Client | Transaction, want: Wanted) -> str:
    """Create or update one owner-less resource; says what it did."""
    while True:
        try:
            cur = client.get(want.namespace, want.type, want.id)
        except NotFoundError:
            new = Resource(want.namespace, want.type, want.id, want.spec,
                           labels=want.labels, annotations=want.annotations)
            if _attempt(lambda: client.create(new)):
                return "created"
            continue  # created meanwhile: update it instead
        md = cur.metadata
        if md.owner:
            raise OwnerConflictError(f"{want.name} belongs to controller {md.owner}; "
                                     "apply writes only resources that no controller owns")
        if md.phase != "running":
            raise PhaseConflictError(f"{want.name} is {md.phase}; it cannot be changed until it is gone")
        labels = md.labels if want.labels is None else want.labels
        annotations = md.annotations if want.annotations is None else want.annotations
        if (cur.spec, md.labels, md.annotations) == (want.spec, labels, annotations):
            return "unchanged"
        cur.spec, md.labels, md.annotations = want.spec, dict(labels), dict(annotations)
        if _attempt(lambda: client.update(cur)):
            return "configured"
        # someone wrote in between: read again


def _attempt(write: Callable[[], Any]) -> bool:
    """True once written; False when another writer won (already exists,
    version conflict) and the caller should read again."""
    try:
        write()
        return True
    except ConflictError as exc:
        if type(exc) is not ConflictError:
            raise
        return False


@click.command()
@click.option("-f", "--filename", "path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="YAML or JSON file of resources ('-' for stdin).")
@runtime_dir_option
def apply(path: str, runtime_dir: Path | None) -> None:
    """Create or update the resources in a file (owner-less resources only).

    \b
    A document is a resource or a list of resources; a YAML file may hold
    many documents. A resource looks like what `get -o yaml` prints:
      metadata: {type: hostnameconfig, id: hostname}
      spec: {hostname: edge-7}
    The namespace defaults to the type's default namespace. The whole file
    applies in one transaction: every resource or, on any error, none.
    """
    items = load_documents(path)
    client = connect(runtime_dir)
    defs = Definitions.load(client)
    wanted = [parse_resource(item, defs, f"{path}: resource {n}") for n, item in enumerate(items, 1)]
    for want, outcome in zip(wanted, apply_all(client, wanted)):
        click.echo(f"{want.name} {outcome}")


#: Times ``apply`` reads and writes again when another writer got in between.
APPLY_ATTEMPTS = 5


def apply_all(client: Client, wanted: list[Wanted]) -> list[str]:
    """Every resource of a file in one transaction: all applied or none."""
    for attempt in range(APPLY_ATTEMPTS):
        try:
            with client.transaction() as txn:
                return [apply_one(txn, want) for want in wanted]
        except ConflictError as exc:
            if type(exc) is not ConflictError or attempt == APPLY_ATTEMPTS - 1:
                raise  # an owner or phase conflict, or lost every time: nothing was applied
    raise AssertionError("unreachable")


# -- delete ----------------------------------------------------------------------


@click.command()
@click.argument("type_", metavar="TYPE", shell_complete=complete_type)
@click.argument("id_", metavar="ID", shell_complete=complete_id)
@click.option("-n", "--namespace", help="Namespace (default: the type's default namespace).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the finalizers of controllers that hold the resource.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for finalizers.")
@click.option("--force", is_flag=True,
              help="Admin only: remove the finalizers still there at once (their holders' cleanup is "
                   "skipped; each is named) and destroy the resource.")
@runtime_dir_option
def delete(type_: str, id_: str, namespace: str | None, wait: bool, timeout: float, force: bool,
           runtime_dir: Path | None) -> None:
    """Delete a resource: tear it down, wait until no controller holds it
    (its finalizers are gone), then destroy it.

    \b
    A finalizer whose controller is gone holds the resource for ever:
      cosihost finalizers list TYPE ID        (who holds it, and are they running)
      cosihost delete TYPE ID --force         (remove them and delete, as the admin)
    """
    client = connect(runtime_dir)
    admin = connect(runtime_dir, admin="delete --force") if force else None
    info = _resolve(client, type_)
    ns = namespace or info.default_namespace
    name = f"{ns}/{info.type}/{id_}"
    if not client.teardown(ns, info.type, id_):
        if admin is not None:
            _force_destroy(client, admin, ns, info.type, id_)
            click.echo(f"{name} deleted")
            return
        if not wait:
            held = client.get(ns, info.type, id_).metadata.finalizers
            click.echo(f"{name} tearing down; held by {', '.join(held)}")
            return
        if not _wait_released(client, ns, info.type, id_, timeout):
            return
    try:
        client.destroy(ns, info.type, id_)
    except NotFoundError:
        pass  # another client finished the job
    click.echo(f"{name} deleted")


#: A controller that is still running may put a finalizer back meanwhile.
FORCE_ATTEMPTS = 3


def _force_destroy(client: Client, admin: Client, ns: str, type_: str, id: str) -> None:
    """Remove whatever finalizers are left, then destroy (as the user: the
    admin token overrides finalizers, not who may delete what)."""
    for _ in range(FORCE_ATTEMPTS):
        try:
            res = client.get(ns, type_, id)
            if res.metadata.finalizers:
                force_off(admin, res, list(res.metadata.finalizers))
            if _attempt(lambda: client.destroy(ns, type_, id)):
                return
        except NotFoundError:
            return  # gone meanwhile: what was asked for
    raise click.ClickException(f"{ns}/{type_}/{id}: finalizers came back {FORCE_ATTEMPTS} times; "
                               "a running controller keeps holding it (see `cosihost finalizers list`)")


def _wait_released(client: Client, ns: str, type: str, id: str, timeout: float) -> bool:
    """Wait until the resource has no finalizers; False if it went away."""
    deadline = time.monotonic() + timeout
    held: Sequence[str] = ()
    with client.watch(ns, type, id) as watch:
        while True:
            remaining = deadline - time.monotonic()
            event = watch.next(timeout=max(0.0, remaining)) if remaining > 0 else None
            if event is None:
                raise click.ClickException(
                    f"{ns}/{type}/{id} is still held by {', '.join(held) or 'finalizers'} after {timeout:g} s; "
                    "it stays tearing down and goes once they are removed (delete again to finish)")
            if event.kind == "error":
                raise click.ClickException(f"watch ended: {event.error}")
            if event.kind == "destroyed":
                click.echo(f"{ns}/{type}/{id} deleted")
                return False
            held = event.resource.metadata.finalizers if event.resource is not None else []
            if not held:
                return True

