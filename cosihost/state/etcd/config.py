"""How to reach an etcd cluster: the settings of an etcd-backed namespace.

Kept apart from the connection so that reading a config file never imports
gRPC: a host without etcd namespaces does not need it loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...errors import InvalidRequestError

DEFAULT_PREFIX = "/cosihost"


@dataclasses.dataclass(frozen=True)
class EtcdConfig:
    """Endpoints (``http://host:port``, ``https://host:port`` or
    ``host:port``), the key prefix shared by every host of one fleet, TLS
    files (a CA to trust, and a client certificate and key when etcd asks
    for one), and how long one write may take, retries during a leader
    election included, before it fails as unavailable."""

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 3.0

    def __post_init__(self) -> None:
        if not self.endpoints or not all(isinstance(e, str) and e for e in self.endpoints):
            raise InvalidRequestError("etcd: endpoints must be a non-empty list of host:port URLs")
        if not self.prefix.startswith("/") or self.prefix.endswith("/") and self.prefix != "/":
            raise InvalidRequestError(f"etcd: prefix {self.prefix!r} must start with / and not end with one")
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidRequestError("etcd: cert_file and key_file go together")
        if not self.timeout > 0:
            raise InvalidRequestError("etcd: timeout must be positive")

    @property
    def secure(self) -> bool:
        return bool(self.ca_file or self.cert_file) or any(e.startswith("https://") for e in self.endpoints)

    @classmethod
    def from_table(cls, name: str, table: dict[str, Any]) -> "EtcdConfig":
        """From a ``[namespaces.NAME]`` table of the config file."""
        known = {"backend", "endpoints", "prefix", "ca_file", "cert_file", "key_file", "timeout"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise InvalidRequestError(f"config: [namespaces.{name}]: unknown key {unknown[0]!r} for etcd")
        endpoints = table.get("endpoints")
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not isinstance(endpoints, list):
            raise InvalidRequestError(f"config: [namespaces.{name}]: endpoints must be a list of URLs")
        for key in ("prefix", "ca_file", "cert_file", "key_file"):
            if key in table and not isinstance(table[key], str):
                raise InvalidRequestError(f"config: [namespaces.{name}]: {key} must be a string")
        timeout = table.get("timeout", 3.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise InvalidRequestError(f"config: [namespaces.{name}]: timeout must be a number of seconds")
        try:
            return cls(endpoints=tuple(endpoints), prefix=table.get("prefix", DEFAULT_PREFIX),
                       ca_file=table.get("ca_file"), cert_file=table.get("cert_file"),
                       key_file=table.get("key_file"), timeout=float(timeout))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"config: [namespaces.{name}]: {exc}") from None
