"""What the processes the supervisor starts run (``python -m cosihost.worker``).

``python -m cosihost.worker probe FILE`` imports a controller module and
prints its controllers' declarations as JSON: the supervisor learns what a
module declares without importing it. ``python -m cosihost.worker run``
reads its settings (with the identity secret) from stdin, so the secret
never shows in the process list or environment, and runs one controller.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import marshal
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack

from .. import logs
from ..controller import Controller
from .loop import WorkerLoop, WorkerSettings

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies, then check it
    had not died already (the request only covers deaths after it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:
        os._exit(1)


def load_module(path: str, source: bytes | None = None, code: bytes | None = None) -> ModuleType:
    """Import the controller module at ``path``; from ``code`` (marshalled)
    or ``source`` when given (the supervisor sends them: under its own user
    a controller may not be able to read the folder the module lives in)."""
    file = Path(path)
    folder = str(file.resolve().parent)
    if folder not in sys.path:  # helper modules (``_common.py``) beside controllers import plainly
        sys.path.append(folder)
    name = f"cosihost_controllers.{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{file} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if code is not None:
        exec(marshal.loads(code), module.__dict__)
    elif source is not None:
        exec(compile(source, str(file), "exec", dont_inherit=True), module.__dict__)  # as an import compiles it
    else:
        spec.loader.exec_module(module)
    return module


def controllers_of(module: ModuleType) -> list[type[Controller]]:
    found: list[type[Controller]] = []
    for value in vars(module).values():
        if value in found:  # one class bound to two names
            continue
        # A class without a ``name`` is a base for others, not a controller.
        if (isinstance(value, type) and issubclass(value, Controller) and value is not Controller
                and value.__module__ == module.__name__ and value.name):
            found.append(value)
    return sorted(found, key=lambda c: c.__name__)


def probe(path: str) -> int:
    module = load_module(path)
    decls = []
    for cls in controllers_of(module):
        decl = cls.declaration()
        decl["class"] = cls.__name__
        decls.append(decl)
    json.dump({"controllers": decls}, sys.stdout)
    sys.stdout.flush()
    return 0


def run() -> int:
    """A cold start: settings (with the secret) arrive on stdin."""
    config = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    sys.stdin.close()
    identity = config.pop("identity", None)
    if identity:  # after exec: the interpreter may live where the controller's user cannot reach
        from .identity import take_or_exit
        take_or_exit(identity, module=config["module"])
    return run_config(config)


def run_config(config: dict[str, Any]) -> int:
    """Run one controller: the same for a cold start and a zygote child."""
    die_with_parent(config.get("parent", 0))
    name = config["name"]
    logs.setup(name)
    try:
        import setproctitle
        setproctitle.setproctitle(f"cosihost: controller {name}")
    except ImportError:
        pass
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    code = config.get("code") if config.get("magic") == importlib.util.MAGIC_NUMBER else None
    module = load_module(config["module"], config.get("source"), code)
    classes = {c.__name__: c for c in controllers_of(module)}
    cls = classes.get(config["class"])
    if cls is None:
        raise SystemExit(f"{config['module']} no longer defines {config['class']}")
    settings = WorkerSettings(name=name, runtime_dir=config["runtime_dir"], secret=config["secret"],
                              heartbeat=config.get("heartbeat", 1.0),
                              backoff_cap=config.get("backoff_cap", 30.0),
                              subscriber_hwm=config.get("subscriber_hwm", 100_000),
                              request_timeout=config.get("request_timeout", 5.0))
    WorkerLoop(cls(), settings).run()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "probe":
        return probe(argv[1])
    if argv == ["run"]:
        return run()
    if len(argv) == 3 and argv[0] == "zygote":
        from .zygote import main as zygote_main
        return zygote_main(int(argv[1]), int(argv[2]))
    print("usage: python -m cosihost.worker probe FILE | run | zygote FD PARENT", file=sys.stderr)
    return 2
