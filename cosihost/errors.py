"""Typed state errors, shared by the in-process state and the wire.

Every error has a stable ``code`` so that an error raised in the supervisor
can be sent over the wire and re-raised in the client as the same class.
Callers branch on the class (``except ConflictError``), never on text.
"""

from __future__ import annotations


class CosiError(Exception):
    """Base of every error the state API raises."""

    code = "internal"


class NotFoundError(CosiError):
    """The resource does not exist."""

    code = "not-found"


class ConflictError(CosiError):
    """Already exists, version conflict, or finalizers still pending."""

    code = "conflict"


class OwnerConflictError(ConflictError):
    """The resource belongs to another owner."""

    code = "owner-conflict"


class PhaseConflictError(ConflictError):
    """The resource is not in the phase the write expected."""

    code = "phase-conflict"


class AccessDeniedError(CosiError):
    """The caller's declaration (or lack of one) forbids this request."""

    code = "access-denied"


class InvalidRequestError(CosiError):
    """The request itself is malformed: bad names, bad spec, bad message."""

    code = "invalid-request"


class OverrunError(CosiError):
    """A watcher fell behind the bounded history and must resync."""

    code = "overrun"


class UnavailableError(CosiError):
    """The supervisor (or a backend) did not answer in time."""

    code = "unavailable"


class ThrottledError(UnavailableError):
    """A controller wrote faster than its write rate limit; nothing was
    applied. ``retry_after``: seconds until it may write again."""

    code = "throttled"

    def __init__(self, message: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


ERRORS_BY_CODE: dict[str, type[CosiError]] = {
    cls.code: cls
    for cls in (
        CosiError,
        NotFoundError,
        ConflictError,
        OwnerConflictError,
        PhaseConflictError,
        AccessDeniedError,
        InvalidRequestError,
        OverrunError,
        UnavailableError,
        ThrottledError,
    )
}


def error_from_code(code: str, message: str) -> CosiError:
    """Rebuild an error received over the wire; unknown codes become CosiError."""
    return ERRORS_BY_CODE.get(code, CosiError)(message)
