"""Test helpers for people who write controllers (and for cosihost's own tests).

- :class:`SupervisorProcess`: a real supervisor in a child process.
- :func:`wait_for`: poll a condition with a deadline instead of sleeping.
- :class:`ControllerHarness`: one controller in process against an
  InMemoryState, for unit tests; :func:`load_controller` imports a
  controller module file for it.
"""

from .harness import ControllerHarness, load_controller
from .process import SupervisorProcess, process_gone, wait_for

__all__ = ["SupervisorProcess", "process_gone", "wait_for", "ControllerHarness", "load_controller"]
