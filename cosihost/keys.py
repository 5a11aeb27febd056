"""CURVE keys for remote access.

A supervisor that listens on TCP (``[remote] listen``) speaks only ZeroMQ's
CURVE mechanism there: every connection is encrypted, and the supervisor
knows each client by its public key, to which the config gives a role.
The server's key pair is made on first start and kept in the state
directory; a client's key file holds its own pair and the server's public
key, which is all ``cosihost --remote URL --key FILE`` needs.

Keys are Z85 text (40 characters), as ZeroMQ prints them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import zmq
from zmq.utils import z85

from .errors import InvalidRequestError

SERVER_KEY_FILE = "remote/server.key"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    public: str
    secret: str

    @classmethod
    def new(cls) -> "KeyPair":
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())


@dataclasses.dataclass(frozen=True)
class ClientKey:
    """A client's key pair and the public key of the server it talks to."""

    pair: KeyPair
    server: str

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ClientKey":
        table = _read(path)
        public, secret, server = (_field(table, name, f"key file {path}") for name in ("public", "secret", "server"))
        return cls(KeyPair(public, secret), server)

    def save(self, path: str | os.PathLike[str]) -> None:
        _write(path, "# a cosihost client key: keep it secret\n"
                     f'public = "{self.pair.public}"\nsecret = "{self.pair.secret}"\nserver = "{self.server}"\n')

    def apply(self, sock: "zmq.Socket[bytes]") -> None:
        """Make ``sock`` a CURVE client of the server (before it connects)."""
        sock.curve_publickey = self.pair.public.encode()
        sock.curve_secretkey = self.pair.secret.encode()
        sock.curve_serverkey = self.server.encode()


def server_keys(state_dir: Path) -> KeyPair:
    """The supervisor's key pair, made (0600) on first use."""
    path = state_dir / SERVER_KEY_FILE
    if path.exists():
        table = _read(path)
        return KeyPair(_field(table, "public", str(path)), _field(table, "secret", str(path)))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = KeyPair.new()
    _write(path, "# the cosihost supervisor's CURVE key pair: keep it secret\n"
                 f'public = "{pair.public}"\nsecret = "{pair.secret}"\n')
    return pair


def check_key(value: object, where: str) -> str:
    """A Z85 CURVE key: 40 characters that decode to 32 bytes."""
    if not isinstance(value, str) or len(value) != 40:
        raise InvalidRequestError(f"{where}: not a CURVE key (40 characters of Z85)")
    try:
        z85.decode(value)
    except (ValueError, KeyError, TypeError, IndexError):
        raise InvalidRequestError(f"{where}: not a CURVE key (40 characters of Z85)") from None
    return value


def _field(table: dict[str, object], name: str, where: str) -> str:
    if name not in table:
        raise InvalidRequestError(f"{where}: no {name!r}")
    return check_key(table[name], f"{where}: {name}")


def _read(path: str | os.PathLike[str]) -> dict[str, object]:
    from .settings import load_config  # settings reads keys too, for [remote]
    return load_config(path, what="key file")


def _write(path: str | os.PathLike[str], text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
