"""Putting a new controller process under its limits, from plain data.

The supervisor's limiter describes a placement as data (files to write the
process into, rlimits to set) so that it can cross to the zygote in a
message; the same function applies it in a Popen ``preexec_fn`` or in a
zygote child, before any controller code runs.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from .identity import take_or_exit


def apply_setup(setup: dict[str, Any], *, module: str = "") -> None:
    """``{"procs": [cgroup.procs or tasks paths], "rlimits": {"RLIMIT_AS": [soft, hard]},
    "identity": {...}}``; ``module``: the controller's, whose folder stays importable."""
    for path in setup.get("procs", ()):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    for name, (soft, hard) in (setup.get("rlimits") or {}).items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if setup.get("identity"):  # last: placing needs root
        take_or_exit(setup["identity"], module=module)
