"""Test helpers for people who write controllers (and for cosihost's own tests).

- :class:`SupervisorProcess`: a real supervisor in a child process.
- :func:`wait_for`: poll a condition with a deadline instead of sleeping.
"""

from .process import SupervisorProcess, wait_for

__all__ = ["SupervisorProcess", "wait_for"]
