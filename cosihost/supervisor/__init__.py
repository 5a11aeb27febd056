"""The supervisor: owns the state, serves requests, runs controller processes.

Internal: users reach it through ``cosihost run`` and ``cosihost.Client``.
"""

from .rundir import AlreadyRunning
from .server import Supervisor

__all__ = ["Supervisor", "AlreadyRunning"]
