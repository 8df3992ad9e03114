"""Request ids, structured logs and the health check.

Every log line is one JSON object with the request id of the request that wrote it (``-``
outside requests). The id comes from the ``X-Request-ID`` header a reverse proxy sets, when
it looks like one, else it is made here; it is sent back in the response's header.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    has_request_context,
    jsonify,
    request,
)
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from core.db import db
from core.security import new_token

REQUEST_ID_HEADER = "X-Request-ID"
#: The OpenAPI description of the endpoints programs call.
OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.yaml")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")
_ATTRIBUTE = "request_id"


def current_request_id() -> str:
    if has_request_context():
        return getattr(g, _ATTRIBUTE, "-")
    return "-"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, _ATTRIBUTE, "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _install_record_factory() -> None:
    """Give every log record, from any logger, the current request's id."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "qunmen", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        setattr(record, _ATTRIBUTE, current_request_id())
        return record

    factory.qunmen = True
    logging.setLogRecordFactory(factory)


def init_observability(app: Flask) -> None:
    _install_record_factory()
    if not app.testing:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JSONFormatter()
            if app.config.get("LOG_FORMAT") == "json"
            else logging.Formatter(
                "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
            )
        )
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(str(app.config.get("LOG_LEVEL", "INFO")).upper())

    @app.before_request
    def _assign_request_id() -> None:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        setattr(g, _ATTRIBUTE, offered if _SANE_ID.fullmatch(offered) else new_token(12))

    @app.after_request
    def _echo_request_id(response):
        response.headers[REQUEST_ID_HEADER] = current_request_id()
        return response

    app.register_blueprint(health)


health = Blueprint("health", __name__)


@health.get("/openapi.yaml")
def openapi_document():
    """The OpenAPI description of the endpoints programs call (health, webhooks)."""
    return Response(OPENAPI_DOCUMENT.read_bytes(), mimetype="application/yaml")


@health.get("/healthz")
def healthz():
    """For load balancers: 200 when the database answers, 503 when it does not."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        logging.getLogger(__name__).exception("health check: database unreachable")
        db.session.rollback()
        return jsonify({"ok": False, "database": "unreachable"}), 503
    return jsonify({"ok": True, "database": "ok"})
