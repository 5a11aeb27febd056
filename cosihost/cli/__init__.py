"""The ``cosihost`` command line.

``run`` starts the supervisor; every other command is a client of a running
one, found through ``--runtime-dir`` or ``COSIHOST_RUNTIME_DIR``. Errors a
person can fix (no supervisor, unknown type, bad file, refused write) end
the command with one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import sys

import click

from .. import logs
from ..errors import CosiError
from ..settings import Settings
from .admin import controllers, graph, reload, restart
from .common import Group
from .finalizers import finalizers
from .keys import keys
from .resources import apply, delete, get


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--remote", metavar="tcp://HOST:PORT", envvar="COSIHOST_REMOTE", default=None,
              help="Talk to the supervisor of another machine (its [remote] listen), over CURVE.")
@click.option("--key", type=click.Path(dir_okay=False), envvar="COSIHOST_KEY", default=None,
              help="The client key file for --remote (made with `cosihost keys new`).")
@click.pass_context
def main(ctx: click.Context, remote: str | None, key: str | None) -> None:
    """cosihost: a COSI-style controller host for devices.

    Start the supervisor with `cosihost run`; in another terminal,
    `cosihost get links` shows what the controllers found.
    """
    if remote is not None and key is None:
        raise click.UsageError("--remote needs --key FILE (or COSIHOST_KEY)")
    ctx.meta["cosihost.remote"] = (remote, key) if remote is not None else None


@main.command()
@click.option("--controllers", "controllers_dir", type=click.Path(file_okay=False), default=None,
              help="Drop-in folder of controller modules, run beside the bundled ones; a module "
                   "named like a bundled one replaces it, an empty one turns it off.")
@click.option("--bundled/--no-bundled", default=None,
              help="Run the bundled device controllers (default: yes, or [controllers] bundled).")
@click.option("--runtime-dir", type=click.Path(file_okay=False), default=None, envvar="COSIHOST_RUNTIME_DIR",
              help="Folder for the sockets (created 0750).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Folder for persistent namespaces.")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="TOML file: persistent namespaces, limits, timings "
                   "(default for root: /etc/cosihost/config.toml if it exists).")
@click.option("--metrics-listen", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics here (over [metrics] listen of the config; port 0: any free "
                   "port, written to <runtime-dir>/metrics.addr).")
def run(controllers_dir: str | None, bundled: bool | None, runtime_dir: str | None, state_dir: str | None,
        config: str | None, metrics_listen: str | None) -> None:
    """Run the supervisor in the foreground."""
    import faulthandler

    from ..supervisor import AlreadyRunning, Supervisor

    faulthandler.enable()  # a watchdog abort then shows where the loop was stuck
    logs.setup("supervisor")
    try:
        settings = Settings.build(controllers_dir=controllers_dir, runtime_dir=runtime_dir,
                                  state_dir=state_dir, config=config, bundled=bundled,
                                  metrics_listen=metrics_listen)
        try:
            import setproctitle
            setproctitle.setproctitle("cosihost: supervisor")
        except ImportError:
            pass
        sys.exit(Supervisor(settings).run())
    except (AlreadyRunning, CosiError) as exc:
        raise click.ClickException(str(exc)) from None


for _command in (get, apply, delete, finalizers, keys, controllers, restart, reload, graph):
    main.add_command(_command)
