"""Errors of the operator API as RFC 9457 problem details (``application/problem+json``).

Every error answer has ``type`` (``urn:buildmaster:problem:<kind>``, listed in docs/api.md),
``title`` (the same for every problem of a kind), ``status``, ``detail`` (what went wrong
with this request and what to do about it) and ``instance`` (the request's path); some add
members of their own (``errors`` for a request that breaks several rules).
"""

from __future__ import annotations

from typing import Any

from twisted.web import http

__all__ = [
    "Problem",
    "PROBLEM_TYPES",
    "problem_type",
    "CONTENT_TYPE",
    "not_found",
    "conflict",
    "unprocessable",
    "forbidden",
    "invalid_parameter",
]

CONTENT_TYPE = b"application/problem+json"

#: every kind of problem the API answers with, and its title
PROBLEM_TYPES = {
    "bad-request": "The request is malformed",
    "invalid-body": "The request body breaks the API's schema",
    "invalid-parameter": "A query parameter is not valid",
    "unsupported-media-type": "The request body has a type this endpoint does not take",
    "body-too-large": "The request body is too large",
    "unauthenticated": "A valid bearer token is needed",
    "forbidden": "The token does not allow this",
    "not-found": "No such resource",
    "method-not-allowed": "The resource does not allow this method",
    "conflict": "The request conflicts with the current state",
    "unprocessable": "The request is well-formed but cannot be carried out",
    "upload-rejected": "The source upload is refused",
    "unavailable": "The service is unavailable for a moment",
    "storage-error": "The file could not be stored",
    "internal-error": "Something went wrong inside the master",
}


def problem_type(kind: str) -> str:
    return f"urn:buildmaster:problem:{kind}"


class Problem(Exception):
    """Raised by a handler to answer with a problem document.

    :param status: the HTTP status.
    :param kind: one of :data:`PROBLEM_TYPES`.
    :param detail: the sentence a person reads: what is wrong, and what to do.
    :param extensions: more members of the document (JSON values).
    """

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        headers: dict[bytes, bytes] | None = None,
        **extensions: Any,
    ) -> None:
        if kind not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem kind {kind!r}")
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def document(self, instance: str) -> dict[str, Any]:
        return {
            "type": problem_type(self.kind),
            "title": PROBLEM_TYPES[self.kind],
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extensions,
        }


def not_found(detail: str) -> Problem:
    return Problem(http.NOT_FOUND, "not-found", detail)


def conflict(detail: str, **extensions: Any) -> Problem:
    return Problem(http.CONFLICT, "conflict", detail, **extensions)


def unprocessable(detail: str, **extensions: Any) -> Problem:
    return Problem(422, "unprocessable", detail, **extensions)


def forbidden(detail: str) -> Problem:
    return Problem(http.FORBIDDEN, "forbidden", detail)


def invalid_parameter(name: str, detail: str) -> Problem:
    return Problem(http.BAD_REQUEST, "invalid-parameter", f"{name}: {detail}", parameter=name)
