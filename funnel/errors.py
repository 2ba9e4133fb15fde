"""Domain exceptions and the one place that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class FunnelError(Exception):
    """Base of every error Funnel reports to a caller; ``code`` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(FunnelError):
    """The request itself is malformed (empty id, k out of range, oversize list)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FunnelError):
    """A named thing (release, user, item) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(FunnelError):
    """The system is not in a state to serve this (release exists but is not loaded here)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(FunnelError):
    """Nothing is loaded yet or a dependency is down; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(FunnelError):
    """The call lacks valid credentials (the admin token)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(FunnelError):
    """The service is at capacity; the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ReleaseError(FunnelError):
    """A release on disk is invalid: missing manifest, checksum mismatch, path escape, fingerprint mismatch."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the problem."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem
