"""cosihost: a COSI-style controller host for devices.

The public face is small: resources, the state API and its errors, the
controller declaration classes (plain, queue, and the ready-made
``generic`` ones), and the wire client. Everything else
(supervisor, worker, wire encoding) is internal.
"""

from .errors import (AccessDeniedError, ConflictError, CosiError, InvalidRequestError, NotFoundError,
                     OverrunError, OwnerConflictError, PhaseConflictError, ThrottledError, UnavailableError)
from .client import Client
from .controller import Controller, Input, Output, ResourceDefinition
from .qcontroller import MappedMetadata, Pointer, QController, Requeue
from . import generic
from .resource import Metadata, Resource
from .runtime import Runtime
from .state import Event, InMemoryState

__all__ = [
    "Resource", "Metadata", "Event", "InMemoryState", "Client",
    "Controller", "Input", "Output", "ResourceDefinition", "Runtime",
    "QController", "Requeue", "Pointer", "MappedMetadata", "generic",
    "CosiError", "NotFoundError", "ConflictError", "OwnerConflictError", "PhaseConflictError",
    "AccessDeniedError", "InvalidRequestError", "OverrunError", "UnavailableError", "ThrottledError",
]
