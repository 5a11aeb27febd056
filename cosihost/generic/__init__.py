"""Ready-made controllers, built from a function or two.

- :func:`transform`: one output per input, orphans destroyed, optional
  input finalizers (a plain controller: every round sees every input).
- :func:`qtransform`: the same on a queue (one input per reconcile, each
  retried alone), with mapped inputs.
- :func:`cleanup`: hold a kind with finalizers until a check lets one go.

Each returns a class; bind it to a name in a controllers module and it is
declared like a hand-written one::

    HostnameSpec = generic.transform(name="net.HostnameSpecController", input=("config", CONFIGS),
                                     output=("network", SPECS), transform=lambda rt, cfg, out: ...)

COSI's ``destroy`` controller (destroy resources with no owner once torn
down and free of finalizers) has no counterpart: here a controller writes
only as itself, never as the user who owns such a resource.
"""

from .base import DestroyOutput, Skip
from .cleanup import cleanup, has_no_outputs
from .qtransform import qtransform
from .transform import transform

__all__ = ["transform", "qtransform", "cleanup", "has_no_outputs", "Skip", "DestroyOutput"]
