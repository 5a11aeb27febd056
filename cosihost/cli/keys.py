"""``cosihost keys``: the CURVE keys of remote access.

On the device, ``cosihost keys server`` prints the supervisor's public key
(made on first start, or now). On the machine that will connect,
``cosihost keys new FILE --server KEY`` makes a client key file and
prints its public key, which goes into the device's ``[remote.clients]``
with a role.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InvalidRequestError
from ..keys import ClientKey, KeyPair, check_key, server_keys
from ..settings import default_state_dir


@click.group()
def keys() -> None:
    """CURVE keys for remote access (see [remote] in the configuration)."""


@keys.command("server")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The supervisor's state folder (default: as `cosihost run` uses).")
def server(state_dir: Path | None) -> None:
    """Print the supervisor's public key (making its key pair if there is none)."""
    try:
        click.echo(server_keys(state_dir or default_state_dir()).public)
    except OSError as exc:
        raise click.ClickException(f"cannot read or make the server key: {exc}") from None


@keys.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--server", "server_key", required=True, metavar="KEY",
              help="The supervisor's public key (`cosihost keys server` on the device).")
def new(path: Path, server_key: str) -> None:
    """Make a client key file (0600) and print its public key."""
    try:
        key = ClientKey(KeyPair.new(), check_key(server_key, "--server"))
        key.save(path)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; a key file is never overwritten") from None
    except (OSError, InvalidRequestError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key.pair.public)
