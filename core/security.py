"""Tokens and signatures: unguessable ids, signed links, constant-time comparison, the
signed session cookie."""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, g, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from itsdangerous import BadSignature, URLSafeTimedSerializer


def same_site_path(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None: never an open redirect.
    Browsers read "/\\host" like "//host", so backslashes are refused outright."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not urlsplit(target).netloc
    ):
        return target
    return None


def new_token(nbytes: int = 24) -> str:
    """An unguessable URL-safe token (``nbytes`` of randomness, less the one in 64 drawn
    again): never starting with "-", which a spreadsheet reads as a formula and a command
    line as an option (order and payment numbers are such tokens)."""
    while (token := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return token


def same_secret(a: str | bytes, b: str | bytes) -> bool:
    """Compare two secrets in constant time."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=f"qunmen.{purpose}")


def sign(purpose: str, value: Any) -> str:
    """A URL-safe signed form of ``value``, valid only for ``purpose``; it carries the
    time it was signed, so :func:`unsign` can refuse it once it is too old."""
    return _serializer(purpose).dumps(value)


def unsign(purpose: str, token: str, *, max_age: timedelta | None = None) -> Any | None:
    """The value signed by :func:`sign` for ``purpose``, or None when the token is bad or,
    given ``max_age``, older than that."""
    try:
        return _serializer(purpose).loads(
            token, max_age=int(max_age.total_seconds()) if max_age else None
        )
    except BadSignature:  # SignatureExpired included
        return None


#: How long a round trip through another site (WeChat's OAuth) may take.
FLOW_LIFETIME = timedelta(minutes=10)


def sign_for_this_browser(purpose: str, value: Any) -> str:
    """A ``state`` for a round trip through another site that only this browser can finish,
    once, within :data:`FLOW_LIFETIME`: a fresh nonce is kept in the session and signed in
    with ``value``. Starting another trip for the same purpose replaces it."""
    nonce = new_token(16)
    session[f"flow.{purpose}"] = nonce
    return sign(purpose, {"nonce": nonce, "value": value})


def unsign_for_this_browser(purpose: str, token: str) -> Any | None:
    """The value of a ``state`` made by :func:`sign_for_this_browser` in this browser, or
    None when it is forged, expired, already used, or from another browser. The nonce is
    used up either way."""
    expected = session.pop(f"flow.{purpose}", None)
    signed = unsign(purpose, token, max_age=FLOW_LIFETIME)
    if not expected or not isinstance(signed, dict):
        return None
    if not same_secret(str(signed.get("nonce", "")), expected):
        return None
    return signed.get("value")


class SignedCookieSessions(SecureCookieSessionInterface):
    """Flask's signed session cookie, whose serializer is made once for the app's keys:
    Flask makes one for every request twice, to open the session and to save it (a
    serializer holds no state of a request; a new key or fallback makes a new one)."""

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        made = app.extensions.get("qunmen.session_serializer")
        if made is None or made[0] != keys:
            made = (keys, super().get_signing_serializer(app))
            app.extensions["qunmen.session_serializer"] = made
        return made[1]


#: CSRF protection for every form; webhook endpoints are exempted where they are defined.
csrf = CSRFProtect()


def init_security_headers(app: Flask) -> None:
    """Headers every response carries. Pages load nothing from elsewhere; their few inline
    scripts (WeChat's JSAPI payment, a contact field's keyboard, copying a link) carry the
    request's nonce."""

    @app.before_request
    def _nonce() -> None:
        g.csp_nonce = new_token(16)

    @app.template_global()
    def csp_nonce() -> str:
        """The request's nonce, for an inline script: a function, so that macros imported
        without the page's context (``{% from … import … %}``) have it too."""
        return g.get("csp_nonce", "")

    @app.after_request
    def _headers(response):
        nonce = g.get("csp_nonce", "")
        response.headers.setdefault(
            "Content-Security-Policy",
            # WeCom serves each join way's QR image from its own host (membership.wecom).
            "default-src 'self'; img-src 'self' data: https://wework.qpic.cn; style-src 'self'; "
            f"script-src 'self' 'nonce-{nonce}'; frame-ancestors 'none'; "
            "form-action 'self' https:; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if app.config.get("SESSION_COOKIE_SECURE"):
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response
