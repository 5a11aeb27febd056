"""What every client command shares: finding the supervisor, turning errors
into one line, and resolving a type argument through ResourceDefinitions."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import click

from .. import wire
from ..client import Client
from ..controller import COLUMN_FORMATS
from ..errors import CosiError, UnavailableError
from ..settings import ENV_RUNTIME_DIR, default_runtime_dir

DEFINITION_TYPE = "ResourceDefinitions.meta.cosihost.dev"
DEFINITION_NAMESPACE = "meta"
STATUS_TYPE = "ControllerStatuses.runtime.cosihost.dev"
STATUS_NAMESPACE = "runtime"
DEFAULT_NAMESPACE = "default"

#: How long a client command waits for the first answer before saying that
#: no supervisor is there. Later requests use the client's usual timeout.
PING_TIMEOUT = 2.0


def runtime_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--runtime-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        envvar=ENV_RUNTIME_DIR, show_envvar=True,
        help="The supervisor's runtime folder (default: where `cosihost run` puts it).")(fn)


def resolve_runtime_dir(runtime_dir: Path | None) -> Path:
    return Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()


def connect(runtime_dir: Path | None, *, timeout: float = 10.0, retries: int = 1,
            admin: str = "") -> Client:
    """A client of the supervisor at ``runtime_dir``, proven to answer; one
    clear error line (and exit 1) when nothing answers there. The client is
    closed when the command ends. ``admin``: what needs the admin token
    (e.g. "removing a finalizer"); the command fails saying so when the
    token cannot be read."""
    ctx = click.get_current_context(silent=True)
    remote = ctx.meta.get("cosihost.remote") if ctx is not None else None
    if remote is not None:
        return _connect_remote(ctx, *remote, timeout=timeout, retries=retries)
    rdir = resolve_runtime_dir(runtime_dir)
    sock = rdir / wire.API_SOCKET
    if not sock.exists():
        raise click.ClickException(f"no supervisor answering at {rdir} (no {wire.API_SOCKET} there; "
                                   f"start one with `cosihost run` or set --runtime-dir / {ENV_RUNTIME_DIR})")
    if not os.access(sock, os.R_OK | os.W_OK):
        raise click.ClickException(f"no supervisor answering at {rdir}: permission denied on {sock} "
                                   "(run as the supervisor's user or group)")
    try:
        client = Client(rdir, timeout=timeout, retries=retries, admin=bool(admin))
    except UnavailableError as exc:
        raise click.ClickException(f"{admin} is for the admin only: {exc} (run as the supervisor's user)") from None
    return _answering(ctx, client, str(rdir), PING_TIMEOUT, f"no supervisor answering at {rdir}")


def _connect_remote(ctx: click.Context | None, remote: str, key: str, *, timeout: float, retries: int) -> Client:
    """A client of a remote supervisor; its key's role decides what it may do there."""
    client = Client(remote=remote, key=key, timeout=timeout, retries=retries)
    return _answering(ctx, client, remote, max(PING_TIMEOUT, 3.0),
                      f"no supervisor answering at {remote} (or it does not know this key)")


def _answering(ctx: click.Context | None, client: Client, where: str, ping: float, failure: str) -> Client:
    """``client`` once its supervisor answered a ping, closed when the command ends."""
    try:
        client.requester(timeout=ping, retries=0).call("ping")
    except UnavailableError:
        client.close()
        raise click.ClickException(failure) from None
    if ctx is not None:
        ctx.obj = {"runtime_dir": where}
        ctx.call_on_close(client.close)
    return client


def complete(ctx: click.Context, incomplete: str, names: Callable[[Client], list[str]]) -> list[str]:
    """Shell completion from the running supervisor: quick, and silent
    (no candidates) when there is none."""
    try:
        rdir = resolve_runtime_dir(ctx.params.get("runtime_dir"))
        if not (rdir / wire.API_SOCKET).exists():
            return []
        with Client(rdir, timeout=0.5, retries=0) as client:
            found = names(client)
    except Exception:
        return []
    return [n for n in found if n.lower().startswith(incomplete.lower())]


def complete_type(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return complete(ctx, incomplete, lambda client: Definitions.load(client).completions())


def complete_id(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    def ids(client: Client) -> list[str]:
        info = Definitions.load(client).resolve(ctx.params["type_"])
        ns = ctx.params.get("namespace") or info.default_namespace
        return [r.metadata.id for r in client.list(ns, info.type)]
    return complete(ctx, incomplete, ids)


class Pinger:
    """Asks, now and then, whether the supervisor still answers (one
    requester for the whole life of a long command such as ``--watch``)."""

    def __init__(self, client: Client) -> None:
        self._req = client.requester(timeout=PING_TIMEOUT, retries=0)

    def alive(self) -> bool:
        try:
            self._req.call("ping")
            return True
        except UnavailableError:
            return False


class Group(click.Group):
    """The command group: a state error ends the command with one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnavailableError as exc:
            where = (ctx.obj or {}).get("runtime_dir", "")
            raise click.ClickException(f"the supervisor at {where} stopped answering ({exc})") from None
        except CosiError as exc:
            raise click.ClickException(one_line(str(exc))) from None


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- types ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Column:
    """One printed column of a resource definition: ``[header, path]`` or
    ``[header, path, format]`` (a format this client does not know shows
    the value as it is)."""

    header: str
    path: str
    format: str = ""

    @classmethod
    def from_spec(cls, col: Any) -> "Column | None":
        if not isinstance(col, (list, tuple)) or len(col) not in (2, 3):
            return None
        fmt = str(col[2]) if len(col) == 3 else ""
        return cls(str(col[0]), str(col[1]), fmt if fmt in COLUMN_FORMATS else "")


@dataclasses.dataclass(frozen=True)
class TypeInfo:
    """A resolved type argument: the type and how to show it."""

    type: str
    default_namespace: str = DEFAULT_NAMESPACE
    print_columns: tuple[Column, ...] = ()
    sensitive: bool = False
    defined: bool = False

    @property
    def short(self) -> str:
        return self.type.split(".", 1)[0]

    @classmethod
    def from_spec(cls, spec: Any) -> "TypeInfo | None":
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            return None
        columns = [c for c in map(Column.from_spec, spec.get("print_columns") or []) if c is not None]
        return cls(spec["type"], str(spec.get("default_namespace") or DEFAULT_NAMESPACE),
                   tuple(columns), bool(spec.get("sensitive")), True)


class Definitions:
    """The ResourceDefinitions the supervisor publishes, for name lookups."""

    def __init__(self, specs: list[Any]) -> None:
        self.infos: dict[str, TypeInfo] = {}
        self.names: dict[str, set[str]] = {}     # lowercased type or alias -> types
        self.shorts: dict[str, set[str]] = {}    # lowercased first segment -> types
        self.spellings: set[str] = set()         # every name as written, for completion
        for spec in specs:
            info = TypeInfo.from_spec(spec)
            if info is None:
                continue
            self.infos[info.type] = info
            for name in [info.type, *(a for a in spec.get("aliases") or [] if isinstance(a, str))]:
                self.names.setdefault(name.lower(), set()).add(info.type)
                self.spellings.add(name)
            self.shorts.setdefault(info.short.lower(), set()).add(info.type)

    @classmethod
    def load(cls, client: Client) -> "Definitions":
        return cls([r.spec for r in client.list(DEFINITION_NAMESPACE, DEFINITION_TYPE)])

    def resolve(self, name: str) -> TypeInfo:
        """A type from its full name, an alias or its plural first segment,
        case-insensitively; a dotted name nobody defined is taken as is."""
        key = name.lower()
        found = self.names.get(key) or self.shorts.get(key) or set()
        if len(found) == 1:
            return self.infos[next(iter(found))]
        if len(found) > 1:
            raise click.ClickException(
                f"type {name!r} is ambiguous: it names {', '.join(sorted(found))}; give the full type name")
        if "." in name:
            return TypeInfo(name)
        raise click.ClickException(
            f"unknown type {name!r}: no resource definition has that name or alias "
            "(`cosihost get rd` lists them)")

    def completions(self) -> list[str]:
        return sorted(self.spellings)
