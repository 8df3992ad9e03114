"""Settings, read from the environment once, when the app is created.

Every setting has a default that lets the product run on a fresh machine: a SQLite file in
the instance folder, the ``fake`` payment provider, a generated secret key kept in the
instance folder. Production sets ``DATABASE_URL`` and ``SECRET_KEY``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _secret_key(instance_path: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept on disk.

    Keeping it on disk means signed member links and sessions survive a restart of the
    demo; production must set SECRET_KEY (the same on every machine).
    """
    if key := os.environ.get("SECRET_KEY"):
        return key
    path = instance_path / "secret_key"
    if not path.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _database_url(instance_path: Path) -> str:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{instance_path / 'qunmen.sqlite3'}"
    # Heroku-style URLs name the old driver; we use psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def from_environment(instance_path: str | Path) -> dict[str, object]:
    """The app's configuration mapping, built from the process environment."""
    instance_path = Path(instance_path)
    return {
        "SECRET_KEY": _secret_key(instance_path),
        "SQLALCHEMY_DATABASE_URI": _database_url(instance_path),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        # Payment providers offered on the join page, in order. Empty: every real provider
        # whose keys are set, and ``fake`` when none is (so the product runs with no keys).
        "PAYMENT_PROVIDERS": os.environ.get("PAYMENT_PROVIDERS", "").split(","),
        # Signs the fake provider's notifications; derived from SECRET_KEY when unset.
        "FAKE_PROVIDER_SECRET": os.environ.get("FAKE_PROVIDER_SECRET"),
        "STRIPE_SECRET_KEY": os.environ.get("STRIPE_SECRET_KEY"),
        "STRIPE_WEBHOOK_SECRET": os.environ.get("STRIPE_WEBHOOK_SECRET"),
        "STRIPE_API_BASE": os.environ.get("STRIPE_API_BASE"),
        "WECHATPAY_APP_ID": os.environ.get("WECHATPAY_APP_ID"),
        "WECHATPAY_APP_SECRET": os.environ.get("WECHATPAY_APP_SECRET"),
        "WECHATPAY_MCH_ID": os.environ.get("WECHATPAY_MCH_ID"),
        "WECHATPAY_API_KEY": os.environ.get("WECHATPAY_API_KEY"),
        "WECHATPAY_MCH_CERT": os.environ.get("WECHATPAY_MCH_CERT"),
        "WECHATPAY_MCH_KEY": os.environ.get("WECHATPAY_MCH_KEY"),
        "WECHATPAY_API_BASE": os.environ.get("WECHATPAY_API_BASE"),
        # WeChat's official-account API (the OAuth that gives a payer's openid).
        "WECHAT_API_BASE": os.environ.get("WECHAT_API_BASE"),
        # Unpaid orders stop accepting payment after this many minutes.
        "ORDER_TTL_MINUTES": int(os.environ.get("ORDER_TTL_MINUTES", "30")),
        # Join-page visits are added up in each process and written at most this often.
        "VISIT_FLUSH_SECONDS": float(os.environ.get("VISIT_FLUSH_SECONDS", "10")),
        # Uploaded group QR images larger than this are refused.
        "MAX_CONTENT_LENGTH": int(os.environ.get("MAX_CONTENT_LENGTH", str(2 * 1024 * 1024))),
        # How many reverse proxies in front of the app set X-Forwarded-For/-Proto/-Host.
        "TRUSTED_PROXIES": int(os.environ.get("TRUSTED_PROXIES", "0")),
        # "json": one JSON object per log line, with the request id; "text" for a terminal.
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "json"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        # Telegram groups: the bot that makes one-use invite links (an admin of each group).
        "TELEGRAM_BOT_TOKEN": os.environ.get("TELEGRAM_BOT_TOKEN"),
        "TELEGRAM_API_BASE": os.environ.get("TELEGRAM_API_BASE"),
        # The secret_token given to setWebhook: Telegram sends it with every update.
        "TELEGRAM_WEBHOOK_SECRET": os.environ.get("TELEGRAM_WEBHOOK_SECRET"),
        # Drain the platform-call queue from a thread of the web process (the demo needs no
        # second process). Production runs ``flask worker`` instead and sets this to 0.
        "QUEUE_IN_PROCESS": os.environ.get("QUEUE_IN_PROCESS", "1") == "1",
        # A WeChat template message for membership reminders, to members whose WeChat is
        # linked (needs WECHATPAY_APP_ID and WECHATPAY_APP_SECRET, the official account).
        "WECHAT_REMINDER_TEMPLATE_ID": os.environ.get("WECHAT_REMINDER_TEMPLATE_ID"),
        # The demo: messages with no sender (SMS, WeChat IDs, e-mail without MAIL_SERVER)
        # are written to the log instead of failing. Never in production: codes are secrets.
        "OUTBOX_TO_LOG": os.environ.get("OUTBOX_TO_LOG", "0") == "1",
        # Outgoing e-mail (login codes …). Without MAIL_SERVER, messages go to the log.
        "MAIL_SERVER": os.environ.get("MAIL_SERVER"),
        "MAIL_PORT": int(os.environ.get("MAIL_PORT", "587")),
        "MAIL_USE_TLS": os.environ.get("MAIL_USE_TLS", "1") == "1",
        "MAIL_USERNAME": os.environ.get("MAIL_USERNAME"),
        "MAIL_PASSWORD": os.environ.get("MAIL_PASSWORD"),
        "MAIL_FROM": os.environ.get("MAIL_FROM", "群门 Qunmen <noreply@localhost>"),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": os.environ.get("SESSION_COOKIE_SECURE", "0") == "1",
        "WTF_CSRF_TIME_LIMIT": None,
    }
