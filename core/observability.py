"""Request ids, structured logs, one log line per request, and the health check.

Every log line is one JSON object with the request id of the request that wrote it (``-``
outside requests). The id comes from the ``X-Request-ID`` header a trusted reverse proxy
sets (``TRUSTED_PROXIES`` > 0), when it looks like one, else it is made here; it is sent
back in the response's header.

No secret reaches a log, at any level, from any logger: every record is redacted when it
is made (query parameters named like secrets, Telegram's ``/bot<token>/``, and the values
of the configured secrets themselves). The line logged for each request names its route
(``/me/link/<token>``), never its path, which may carry a token.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable

from flask import (
    Blueprint,
    Flask,
    g,
    has_request_context,
    jsonify,
    request,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from core.db import db
from core.security import new_token

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")
_ATTRIBUTE = "request_id"
#: What a redacted secret reads as in the log.
REDACTED = "[redacted]"
#: Settings whose values are secrets; their values are redacted wherever they appear.
SECRET_SETTINGS = (
    "SECRET_KEY",
    "FAKE_PROVIDER_SECRET",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "WECHATPAY_APP_SECRET",
    "WECHATPAY_API_KEY",
    "WECHATPAY_V3_KEY",
    "WECHATPAY_MCH_PRIVATE_KEY",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "MAIL_PASSWORD",
    "ALIYUN_ACCESS_KEY_SECRET",
    "TENCENT_SECRET_KEY",
)
#: A query parameter whose name says it carries a secret (``appsecret``, ``code``,
#: ``access_token``, ``sign`` …): its value goes.
_SECRET_PARAMETER = re.compile(
    r"([?&][\w.-]*(?:secret|key|token|code|sign|password|ticket)[\w.-]*=)[^&\s\"'#]+",
    re.IGNORECASE,
)
#: Telegram's Bot API puts the bot's token in the path: ``/bot123456:AA…/sendMessage``.
_BOT_TOKEN_PATH = re.compile(r"/bot\d+:[\w-]+")
#: Shorter configured values are not redacted: they would blank out ordinary words.
_SHORTEST_SECRET = 8
#: The configured secrets of every app made in this process, longest first.
_secrets: list[str] = []


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
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def redact(text: str) -> str:
    """``text`` without the secrets it may carry (see the module's docstring)."""
    text = _SECRET_PARAMETER.sub(rf"\1{REDACTED}", text)
    text = _BOT_TOKEN_PATH.sub(f"/bot{REDACTED}", text)
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def _remember_secrets(values: Iterable[object]) -> None:
    """Add configured secret values to those :func:`redact` removes; called once per app."""
    known = set(_secrets) | {v for v in values if isinstance(v, str) and len(v) >= _SHORTEST_SECRET}
    _secrets[:] = sorted(known, key=len, reverse=True)


def keep_out_of_logs(value: str) -> None:
    """Redact ``value`` from every log record from now on: a secret read at run time
    rather than configured (a community's payment key, see :mod:`core.secrets`)."""
    _remember_secrets([value])


def _database_password(uri: str) -> str | None:
    try:
        return make_url(uri).password
    except ArgumentError:
        return None


def _redact_record(record: logging.LogRecord) -> None:
    """Redact a record as it is made, for every handler: its message (arguments merged
    in) and its traceback, which the formatters then use as they are."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # arguments that do not fit: logged as they are
        message = f"{record.msg} {record.args}"
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


def _install_record_factory() -> None:
    """Give every log record, from any logger, the current request's id, and redact it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "qunmen", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        setattr(record, _ATTRIBUTE, current_request_id())
        _redact_record(record)
        return record

    factory.qunmen = True
    logging.setLogRecordFactory(factory)


def init_observability(app: Flask) -> None:
    """Set up logging for ``app`` (called once by ``create_app``): redaction of its
    secrets, the root handler and level (not under the tests, whose logs pytest captures),
    request ids and the line logged for each request."""
    _remember_secrets(
        [app.config.get(name) for name in SECRET_SETTINGS]
        + [_database_password(str(app.config.get("SQLALCHEMY_DATABASE_URI", "")))]
    )
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
        # The development server's own request lines carry paths; ours carry routes.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    @app.before_request
    def _assign_request_id() -> None:
        """A client could make our log lines look like another request's: the id it sends
        is taken only from behind a trusted proxy (which sets it)."""
        g.request_started = time.perf_counter()
        trusted = app.config["TRUSTED_PROXIES"] > 0
        offered = request.headers.get(REQUEST_ID_HEADER, "") if trusted else ""
        setattr(g, _ATTRIBUTE, offered if _SANE_ID.fullmatch(offered) else new_token(12))

    @app.after_request
    def _echo_request_id(response):
        response.headers[REQUEST_ID_HEADER] = current_request_id()
        route = request.url_rule.rule if request.url_rule else "(no route)"
        elapsed = (time.perf_counter() - g.get("request_started", time.perf_counter())) * 1000
        request_log.info(
            "%s %s %s %.0fms %s",
            request.method,
            route,
            response.status_code,
            elapsed,
            request.remote_addr or "-",
        )
        return response

    app.register_blueprint(health)


#: One line per request: method, route (never the path), status, milliseconds, client.
request_log = logging.getLogger("qunmen.request")
health = Blueprint("health", __name__)


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
