"""The supervisor: owns the state, serves requests, runs controller processes.

Internal: users reach it through ``cosihost run`` and ``cosihost.Client``.
"""

from .server import AlreadyRunning, Supervisor

__all__ = ["Supervisor", "AlreadyRunning"]
