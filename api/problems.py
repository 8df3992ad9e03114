"""Errors as ``application/problem+json`` (RFC 9457): type, title, status, detail, in the
language of the request (English unless the client asks for Chinese, see ``api.views``)."""

from __future__ import annotations

from http import HTTPStatus

from flask import Response, json
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import HTTPException

PROBLEM_TYPE = "application/problem+json"
#: The titles of the statuses the API answers with, in the reader's language; another
#: status is titled by its English phrase.
TITLES = {
    400: _l("Bad request"),
    401: _l("Unauthorized"),
    403: _l("Forbidden"),
    404: _l("Not found"),
    405: _l("Method not allowed"),
    409: _l("Conflict"),
    413: _l("Request too large"),
    415: _l("Unsupported media type"),
    422: _l("Unprocessable request"),
    429: _l("Too many requests"),
    500: _l("Internal server error"),
    503: _l("Service unavailable"),
}


class Problem(HTTPException):
    """An API error; raise it from a view. ``detail`` says what was wrong, in the
    request's language."""

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
        "title": str(TITLES.get(status, HTTPStatus(status).phrase)),
        "status": status,
        "detail": str(detail),
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
