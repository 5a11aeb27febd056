"""Where things live and how the supervisor is tuned.

Defaults are embedded so that ``cosihost run`` works with no flags: as root
the FHS places a systemd unit also uses (``/run/cosihost``,
``/var/lib/cosihost``), otherwise per-user folders. Client commands find the
supervisor the same way, so ``cosihost get`` in another terminal needs no
flag either. What flags should not carry goes in a TOML config file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import InvalidRequestError

ENV_RUNTIME_DIR = "COSIHOST_RUNTIME_DIR"


def default_runtime_dir() -> Path:
    env = os.environ.get(ENV_RUNTIME_DIR)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/cosihost")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cosihost-{os.geteuid()}"
    return Path(base) / "cosihost"


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/cosihost")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cosihost"


def default_config() -> Path | None:
    """``/etc/cosihost/config.toml`` for root, when it exists: optional."""
    path = Path("/etc/cosihost/config.toml")
    return path if os.geteuid() == 0 and path.is_file() else None


def bundled_controllers_dir() -> Path:
    """The bundled device controllers.

    The checkout keeps them in ``controllers/`` beside the package (where the
    design puts them and where a developer edits them); a wheel installs that
    same folder as ``cosihost/bundled`` (see pyproject.toml), so an installed
    host runs them from wherever it was installed.
    """
    here = Path(__file__).resolve().parent
    shipped = here / "bundled"
    return shipped if shipped.is_dir() else here.parent / "controllers"


@dataclasses.dataclass
class Timing:
    """Supervision timings, in seconds."""

    heartbeat: float = 2.5
    hung_after: float = 30.0
    backoff_base: float = 0.1
    backoff_cap: float = 30.0
    stable_after: float = 60.0
    crash_loop_restarts: int = 5
    crash_loop_window: float = 60.0
    stop_timeout: float = 5.0
    probe_timeout: float = 15.0
    usage_every: float = 10.0
    #: Events a controller's subscriber (and the publisher, per subscriber)
    #: queues before dropping; a drop is a gap the controller then repairs.
    subscriber_hwm: int = 100_000
    publisher_hwm: int = 100_000
    #: Fork controllers from a preloaded zygote (fast restarts) rather than
    #: starting a fresh interpreter each time.
    zygote: bool = True
    #: How long a controller waits for a reply before it reopens its socket
    #: and sends the request again (Lazy Pirate).
    request_timeout: float = 5.0
    #: How long a controller whose inputs shrank has to unsubscribe from the
    #: kinds it may no longer read before it is restarted (see
    #: cosihost.supervisor.revocation).
    revoke_within: float = 5.0


@dataclasses.dataclass
class Settings:
    #: The drop-in folder: modules here run beside the bundled ones, and one
    #: named like a bundled module replaces it (an empty file turns it off).
    controllers_dir: Path | None
    runtime_dir: Path
    state_dir: Path
    #: Run the bundled device controllers (``[controllers] bundled``).
    bundled: bool = True
    #: What becomes of a removed controller's outputs: "keep" or "destroy"
    #: (``[controllers] removed_outputs``; see cosihost.supervisor.orphans).
    removed_outputs: str = "keep"
    persistent_namespaces: list[str] = dataclasses.field(default_factory=list)
    #: Namespaces kept in etcd, with how to reach it (an EtcdConfig each).
    etcd_namespaces: dict[str, Any] = dataclasses.field(default_factory=dict)
    limits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    timing: Timing = dataclasses.field(default_factory=Timing)
    history: int = 8192
    #: Where to serve Prometheus metrics, (host, port); None: not served.
    metrics_listen: tuple[str, int] | None = None
    #: The group whose members may use the local sockets (``[access] group``), as a gid.
    access_group: int | None = None
    #: With it, only members of this group (``[access] writers``) may write; others read.
    access_writers: int | None = None
    #: Each controller as a user of its own (``[isolation]``), or None: off.
    #: Settings.build makes it "auto" (on as root) unless the config says false.
    isolation: Any = None
    #: Remote access over CURVE (``[remote]``), or None: off.
    remote: "RemoteAccess | None" = None

    @classmethod
    def build(cls, *, controllers_dir: str | os.PathLike[str] | None = None,
              runtime_dir: str | os.PathLike[str] | None = None,
              state_dir: str | os.PathLike[str] | None = None,
              config: str | os.PathLike[str] | None = None,
              bundled: bool | None = None, metrics_listen: str | None = None) -> "Settings":
        """Flags win over the config file, which wins over the defaults."""
        settings = cls(
            controllers_dir=None,
            runtime_dir=Path(runtime_dir) if runtime_dir else default_runtime_dir(),
            state_dir=Path(state_dir) if state_dir else default_state_dir(),
        )
        config = config if config is not None else default_config()
        if config is not None:
            settings.apply_config(load_config(config))
        else:
            settings._apply_isolation({})
        if controllers_dir:
            settings.controllers_dir = Path(controllers_dir)
        if bundled is not None:
            settings.bundled = bundled
        if metrics_listen is not None:  # the flag wins over the config
            settings.metrics_listen = parse_listen(metrics_listen, "--metrics-listen")
        return settings

    def controller_folders(self) -> list[Path]:
        """Where controller modules come from, in overriding order (later wins)."""
        folders = [bundled_controllers_dir()] if self.bundled else []
        if self.controllers_dir is not None and self.controllers_dir not in folders:
            folders.append(self.controllers_dir)
        return folders

    def apply_config(self, data: dict[str, Any]) -> None:
        for name, ns in (data.get("namespaces") or {}).items():
            if not isinstance(ns, dict):
                raise InvalidRequestError(f"config: [namespaces.{name}] must be a table")
            backend = ns.get("backend", "memory")
            if backend == "etcd":
                if ns.get("persistent"):
                    raise InvalidRequestError(f"config: [namespaces.{name}]: an etcd namespace is "
                                              "durable in etcd; drop persistent")
                from .state.etcd.config import EtcdConfig
                self.etcd_namespaces[name] = EtcdConfig.from_table(
                    name, {k: v for k, v in ns.items() if k != "persistent"})
            elif backend != "memory":
                raise InvalidRequestError(f"config: [namespaces.{name}]: unknown backend {backend!r} "
                                          "(memory or etcd)")
            elif ns.get("persistent"):
                self.persistent_namespaces.append(name)
        self._apply_controllers(data.get("controllers") or {})
        for name, limits in (data.get("limits") or {}).items():
            if not isinstance(limits, dict):
                raise InvalidRequestError(f"config: [limits.\"{name}\"] must be a table")
            self.limits[name] = dict(limits)
        timing = data.get("timing") or {}
        known = {f.name for f in dataclasses.fields(Timing)}
        for key, value in timing.items():
            if key not in known:
                raise InvalidRequestError(f"config: unknown [timing] key {key!r}")
            setattr(self.timing, key, type(getattr(self.timing, key))(value))
        if "history" in data:
            self.history = int(data["history"])
        self._apply_metrics(data.get("metrics"))
        if data.get("access") is not None:
            self.access_group, self.access_writers = _access(data["access"])
        self._apply_isolation(data.get("isolation", {}))
        if data.get("remote") is not None:
            self.remote = RemoteAccess.from_table(data["remote"])

    def _apply_isolation(self, table: Any) -> None:
        """``[isolation]``; without it, "auto": on when the supervisor runs as root."""
        from .supervisor.identity import Isolation
        self.isolation = Isolation.from_table(table, access_group=self.access_group)
        if self.isolation is not None and self.access_group not in (None, self.isolation.group):
            raise InvalidRequestError("config: [isolation] group must be the [access] group: "
                                      "one group owns the sockets")

    def _apply_metrics(self, table: Any) -> None:
        if table is None:
            return
        if not isinstance(table, dict):
            raise InvalidRequestError("config: [metrics] must be a table")
        unknown = sorted(set(table) - {"listen"})
        if unknown:
            raise InvalidRequestError(f"config: unknown [metrics] key {unknown[0]!r} (known: listen)")
        if "listen" in table:
            self.metrics_listen = parse_listen(table["listen"], "config: [metrics] listen")


    def _apply_controllers(self, table: dict[str, Any]) -> None:
        unknown = set(table) - {"dir", "bundled", "removed_outputs"}
        if unknown:
            raise InvalidRequestError(f"config: unknown [controllers] key {sorted(unknown)[0]!r} "
                                      "(dir, bundled, removed_outputs)")
        if "removed_outputs" in table:
            if table["removed_outputs"] not in ("keep", "destroy"):
                raise InvalidRequestError("config: [controllers] removed_outputs must be \"keep\" or \"destroy\", "
                                          f"not {table['removed_outputs']!r}")
            self.removed_outputs = table["removed_outputs"]
        if "dir" in table:
            if not isinstance(table["dir"], str) or not table["dir"]:
                raise InvalidRequestError("config: [controllers] dir must be a folder path")
            self.controllers_dir = Path(table["dir"])
        if "bundled" in table:
            if not isinstance(table["bundled"], bool):
                raise InvalidRequestError("config: [controllers] bundled must be true or false")
            self.bundled = table["bundled"]


def _access(table: Any) -> tuple[int, int | None]:
    """``[access] group`` (who besides the supervisor's user may use its sockets) and
    ``writers`` (who among them may write), names or gids."""
    if not isinstance(table, dict) or set(table) - {"group", "writers"} or "group" not in table:
        raise InvalidRequestError("config: [access] takes group = \"NAME\" (or a gid) and writers")
    writers = table.get("writers")
    return _gid(table["group"], "group"), None if writers is None else _gid(writers, "writers")


def _gid(group: Any, key: str) -> int:
    import grp
    if isinstance(group, int) and not isinstance(group, bool) and group >= 0:
        return group
    if not isinstance(group, str) or not group:
        raise InvalidRequestError(f"config: [access] {key} must be a group name or a gid, not {group!r}")
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidRequestError(f"config: [access] {key} {group!r}: no such group on this machine") from None


ROLES = ("read", "write", "admin")


@dataclasses.dataclass(frozen=True)
class RemoteAccess:
    """``[remote]``: the API over TCP with CURVE, for the keys it names.

    ``listen = "tcp://HOST:PORT"`` serves requests on PORT and events on
    PORT + 1; ``[remote.clients.NAME]`` gives a client's public ``key`` a
    ``role``: read (reads and watches), write (and user writes), admin
    (and anything the local admin may do, restarts and reloads included).
    """

    host: str
    port: int
    clients: dict[str, tuple[str, str]]  # public key -> (name, role)

    @property
    def requests(self) -> str:
        return remote_endpoints(self.host, self.port)[0]

    @property
    def events(self) -> str:
        return remote_endpoints(self.host, self.port)[1]

    @classmethod
    def from_table(cls, table: Any) -> "RemoteAccess":
        from .keys import check_key
        if not isinstance(table, dict):
            raise InvalidRequestError("config: [remote] must be a table")
        unknown = sorted(set(table) - {"listen", "clients"})
        if unknown:
            raise InvalidRequestError(f"config: unknown [remote] key {unknown[0]!r} (listen, clients)")
        listen = table.get("listen")
        if not isinstance(listen, str) or not listen.startswith("tcp://"):
            raise InvalidRequestError(f"config: [remote] listen must be \"tcp://HOST:PORT\", not {listen!r}")
        host, port = parse_listen(listen.removeprefix("tcp://"), "config: [remote] listen")
        if not 0 < port < 65535:
            raise InvalidRequestError("config: [remote] listen needs a port (events use the next one)")
        clients: dict[str, tuple[str, str]] = {}
        for name, entry in (table.get("clients") or {}).items():
            where = f"config: [remote.clients.{name}]"
            if not isinstance(entry, dict) or entry.get("role") not in ROLES:
                raise InvalidRequestError(f"{where}: needs key = \"...\" and role = read, write or admin")
            clients[check_key(entry.get("key"), f"{where} key")] = (name, entry["role"])
        return cls(host, port, clients)


def remote_endpoints(host: str, port: int) -> tuple[str, str]:
    """Remote access's two addresses: requests on PORT, events on PORT + 1."""
    return f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}"


def parse_listen(value: Any, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); port 0 picks a free one."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where} must be a string \"HOST:PORT\", not {value!r}")
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535
            or any(c in host for c in "[]/ ") or (":" in host and not bracketed)):
        raise InvalidRequestError(f"{where}: {value!r} is not HOST:PORT (e.g. \"127.0.0.1:9464\", "
                                  "\"[::1]:9464\"; port 0 picks a free one)")
    return host, int(port)


def load_config(path: str | os.PathLike[str], *, what: str = "config") -> dict[str, Any]:
    """A TOML file; one clear error naming ``what`` it is when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise InvalidRequestError(f"{what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(f"{what} {path}: {exc}") from None
