"""Domain errors and the one table that maps them to gRPC status codes.

Layers below the servicer raise these (no grpc imports there); `api.py` turns them into statuses.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error a client should see; the message goes to the client verbatim."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(ServiceError):
    """The request is fine but the server cannot serve it as things stand (e.g. a model failed its integrity check)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, message) for any exception: domain errors keep theirs, anything else is INTERNAL."""
    if isinstance(error, ServiceError):
        return error.code, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}"
