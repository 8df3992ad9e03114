"""Errors as ``application/problem+json`` (RFC 9457): type, title, status, detail."""

from __future__ import annotations

from http import HTTPStatus

from flask import Response, json
from werkzeug.exceptions import HTTPException

PROBLEM_TYPE = "application/problem+json"


class Problem(HTTPException):
    """An API error; raise it from a view. ``detail`` says what was wrong, Chinese first."""

    def __init__(self, status: int, detail: str, *, errors: dict | None = None) -> None:
        super().__init__(detail)
        self.code = status
        self.detail = detail
        self.errors = errors

    def get_response(self, environ=None, scope=None) -> Response:
        return problem_response(self.code, self.detail, errors=self.errors)


def problem_response(status: int, detail: str, *, errors: dict | None = None) -> Response:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_TYPE)


def handle_http_exception(error: HTTPException) -> Response:
    """Any HTTP error in the API (webargs' 422 with its field errors included)."""
    if isinstance(error, Problem):
        return error.get_response()
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    return problem_response(error.code or 500, error.description or "", errors=errors)
