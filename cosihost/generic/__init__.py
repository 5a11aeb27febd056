"""Ready-made controllers, built from a function or two.

- :func:`transform`: one output per input, orphans destroyed, optional
  input finalizers (a plain controller: every round sees every input).
- :func:`qtransform`: the same on a queue (one input per reconcile, each
  retried alone), with mapped inputs.
- :func:`cleanup`: hold a kind with finalizers until a check lets one go.
- :func:`destroy`: destroy the controller's own resources of a kind once
  they are tearing down and no finalizer holds them.

Each returns a class; bind it to a name in a controllers module and it is
declared like a hand-written one::

    HostnameSpec = generic.transform(name="net.HostnameSpecController", input=("config", CONFIGS),
                                     output=("network", SPECS), transform=lambda rt, cfg, out: ...)

COSI's ``destroy`` controller finishes the deletion of resources with *no*
owner (a user's). Here a controller writes only as itself, never as the
user, so ours finishes the deletion of resources it owns: torn down under
its name (by an operator with the admin token acting as it, say) and left
for it to destroy when their holders let go.
"""

from .base import DestroyOutput, Skip
from .cleanup import cleanup, has_no_outputs
from .destroy import destroy
from .qtransform import qtransform
from .transform import transform

__all__ = ["transform", "qtransform", "cleanup", "destroy", "has_no_outputs", "Skip", "DestroyOutput"]
