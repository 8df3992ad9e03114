"""Settings, read from the environment once, when the app is created.

The app is in production unless ``QUNMEN_DEMO`` is on (``bin/demo`` sets it) or it runs the
tests (``TESTING``). Production refuses to start without ``SECRET_KEY``, without
``PUBLIC_BASE_URL`` or without a real payment provider, and a malformed setting stops any
start with the setting's name. The demo runs on a fresh machine with no settings at all: a
SQLite file and a generated secret key in the instance folder (readable by its owner only),
the ``fake`` payment provider, links on ``http://127.0.0.1:5000``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import MutableMapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from core.secrets import parse_keys

#: Where the demo's links point when ``PUBLIC_BASE_URL`` is unset (``flask run``'s address).
DEMO_BASE_URL = "http://127.0.0.1:5000"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_Number = TypeVar("_Number", int, float)
#: The SMS providers' API addresses when ``ALIYUN_SMS_ENDPOINT``/``TENCENT_SMS_ENDPOINT``
#: are unset: the real ones, over https.
ALIYUN_SMS_ENDPOINT = "https://dysmsapi.aliyuncs.com"
TENCENT_SMS_ENDPOINT = "https://sms.tencentcloudapi.com"
#: Each SMS provider's API address setting, and its default.
SMS_ENDPOINT_SETTINGS = {
    "aliyun": ("ALIYUN_SMS_ENDPOINT", ALIYUN_SMS_ENDPOINT),
    "tencent": ("TENCENT_SMS_ENDPOINT", TENCENT_SMS_ENDPOINT),
}
#: What each SMS provider needs, besides ``SMS_SIGN_NAME``, to send anything.
SMS_PROVIDER_SETTINGS = {
    "aliyun": ("ALIYUN_ACCESS_KEY_ID", "ALIYUN_ACCESS_KEY_SECRET"),
    "tencent": ("TENCENT_SECRET_ID", "TENCENT_SECRET_KEY", "TENCENT_SMS_SDK_APP_ID"),
}


class SettingError(RuntimeError):
    """A setting is missing, malformed or unsafe; the message names it. Startup stops."""


def _flag(name: str, default: bool | None) -> bool | None:
    """The boolean setting ``name``: 1/0, true/false, yes/no or on/off, in any case;
    ``default`` when unset or empty. Anything else raises :class:`SettingError`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingError(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off")


def _number(name: str, default: _Number, kind: type[_Number]) -> _Number:
    """The numeric setting ``name`` as ``kind``; a malformed one raises SettingError."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a {kind.__name__}") from None


def _demo_secret_key(instance_path: Path) -> str:
    """The demo's secret key: generated once and kept in the instance folder, so signed
    member links and sessions survive a restart of the demo."""
    path = instance_path / "secret_key"
    if not path.exists():
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _protect_demo_files(instance_path: Path, database_uri: str) -> None:
    """Make the demo's instance folder (secret key, credentials, SQLite file) private to
    its owner, and its SQLite file too, created here empty if need be so that SQLite
    (which gives its journals the database file's mode) never makes it world-readable."""
    instance_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    instance_path.chmod(0o700)
    database = Path(database_uri.removeprefix("sqlite:///"))
    if database_uri.startswith("sqlite:///") and database.parent == instance_path:
        database.touch(mode=0o600)
        database.chmod(0o600)


def _public_base_url(value: str) -> str:
    """``PUBLIC_BASE_URL`` checked: an absolute http(s) URL, perhaps with a path prefix,
    without query or fragment; returned without its trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise SettingError(
            f"PUBLIC_BASE_URL={value!r} is not a base URL like https://join.example.com"
        )
    return value.rstrip("/")


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
        # The demo: the fake provider, a generated secret key, plain-http cookies, messages
        # in the log. Never in production.
        "QUNMEN_DEMO": _flag("QUNMEN_DEMO", False),
        # Signs sessions and links; the same on every machine. Required but in the demo.
        "SECRET_KEY": os.environ.get("SECRET_KEY") or None,
        # The one origin (and path prefix) of every link we send out: payment callbacks,
        # return URLs, links in messages. The request's Host header is never used for them.
        "PUBLIC_BASE_URL": os.environ.get("PUBLIC_BASE_URL") or None,
        "SQLALCHEMY_DATABASE_URI": _database_url(instance_path),
        # Filled in for the database by complete() (see _engine_options).
        "SQLALCHEMY_ENGINE_OPTIONS": {},
        # PostgreSQL is reached through PgBouncer in transaction mode (see complete()).
        "DATABASE_PGBOUNCER": _flag("DATABASE_PGBOUNCER", False),
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
        # WeChat Pay API v3: set, it is used instead of v2 (whose key, when set too, still
        # reads v2 notifications). The APIv3 key (32 characters); the merchant's API
        # private key (PEM text, or the path of its file) and its certificate's serial
        # number; WeChat Pay's platform public key (PEM text or path) and its id, else the
        # platform certificates are fetched and kept in WECHATPAY_PLATFORM_CERT_DIR.
        "WECHATPAY_V3_KEY": os.environ.get("WECHATPAY_V3_KEY"),
        "WECHATPAY_MCH_PRIVATE_KEY": os.environ.get("WECHATPAY_MCH_PRIVATE_KEY"),
        "WECHATPAY_MCH_CERT_SERIAL": os.environ.get("WECHATPAY_MCH_CERT_SERIAL"),
        "WECHATPAY_PLATFORM_PUBLIC_KEY": os.environ.get("WECHATPAY_PLATFORM_PUBLIC_KEY"),
        "WECHATPAY_PLATFORM_PUBLIC_KEY_ID": os.environ.get("WECHATPAY_PLATFORM_PUBLIC_KEY_ID"),
        "WECHATPAY_PLATFORM_CERT_DIR": os.environ.get("WECHATPAY_PLATFORM_CERT_DIR")
        or str(instance_path / "wechatpay_platform_certs"),
        "WECHATPAY_V3_API_BASE": os.environ.get("WECHATPAY_V3_API_BASE"),
        # WeChat's official-account API (the OAuth that gives a payer's openid).
        "WECHAT_API_BASE": os.environ.get("WECHAT_API_BASE"),
        # Unpaid orders stop accepting payment after this many minutes.
        "ORDER_TTL_MINUTES": _number("ORDER_TTL_MINUTES", 30, int),
        # Join-page visits are added up in each process and written at most this often.
        "VISIT_FLUSH_SECONDS": _number("VISIT_FLUSH_SECONDS", 10.0, float),
        # Uploaded group QR images larger than this are refused.
        "MAX_CONTENT_LENGTH": _number("MAX_CONTENT_LENGTH", 2 * 1024 * 1024, int),
        # How many reverse proxies in front of the app set X-Forwarded-For/-Proto/-Host.
        "TRUSTED_PROXIES": _number("TRUSTED_PROXIES", 0, int),
        # "json": one JSON object per log line, with the request id; "text" for a terminal.
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "json"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        # Telegram groups: the bot that makes one-use invite links (an admin of each group).
        "TELEGRAM_BOT_TOKEN": os.environ.get("TELEGRAM_BOT_TOKEN"),
        "TELEGRAM_API_BASE": os.environ.get("TELEGRAM_API_BASE"),
        # The secret_token given to setWebhook: Telegram sends it with every update.
        "TELEGRAM_WEBHOOK_SECRET": os.environ.get("TELEGRAM_WEBHOOK_SECRET"),
        # WeCom customer groups (企业微信客户群): the enterprise's corp id and the secret of
        # the app configured for 客户联系 (join ways, group lists); the callback's token and
        # EncodingAESKey (``/webhooks/wecom``); another API address (the tests' fake).
        "WECOM_CORP_ID": os.environ.get("WECOM_CORP_ID"),
        "WECOM_SECRET": os.environ.get("WECOM_SECRET"),
        "WECOM_CALLBACK_TOKEN": os.environ.get("WECOM_CALLBACK_TOKEN"),
        "WECOM_ENCODING_AES_KEY": os.environ.get("WECOM_ENCODING_AES_KEY"),
        "WECOM_API_BASE": os.environ.get("WECOM_API_BASE"),
        # Drain the platform-call queue from a thread of the web process (the demo needs no
        # second process). Production runs ``flask worker`` instead and sets this to 0.
        "QUEUE_IN_PROCESS": _flag("QUEUE_IN_PROCESS", True),
        # The official account's template message for each kind of message, to members
        # whose WeChat is linked (needs WECHATPAY_APP_ID and WECHATPAY_APP_SECRET). A kind
        # without one is not sent by WeChat.
        **{
            f"WECHAT_TEMPLATE_{kind}": os.environ.get(f"WECHAT_TEMPLATE_{kind}")
            for kind in ("PAY_LINK", "REMINDER", "ANNOUNCEMENT", "NOTICE")
        },
        # The demo: messages with no sender (SMS, WeChat IDs, e-mail without MAIL_SERVER)
        # are written to the log instead of failing. Never in production: codes are secrets.
        "OUTBOX_TO_LOG": _flag("OUTBOX_TO_LOG", False),
        # SMS: "aliyun" (Alibaba Cloud SMS) or "tencent" (Tencent Cloud SMS); unset, no SMS.
        # Messages go by the provider's approved templates: the sign (签名) and one template
        # per message kind; a kind without a template cannot go by SMS.
        "SMS_PROVIDER": os.environ.get("SMS_PROVIDER") or None,
        "SMS_SIGN_NAME": os.environ.get("SMS_SIGN_NAME"),
        "SMS_TEMPLATE_LOGIN_CODE": os.environ.get("SMS_TEMPLATE_LOGIN_CODE"),
        "SMS_TEMPLATE_PAY_LINK": os.environ.get("SMS_TEMPLATE_PAY_LINK"),
        "SMS_TEMPLATE_REMINDER": os.environ.get("SMS_TEMPLATE_REMINDER"),
        "SMS_TEMPLATE_ANNOUNCEMENT": os.environ.get("SMS_TEMPLATE_ANNOUNCEMENT"),
        "SMS_TEMPLATE_NOTICE": os.environ.get("SMS_TEMPLATE_NOTICE"),
        "ALIYUN_ACCESS_KEY_ID": os.environ.get("ALIYUN_ACCESS_KEY_ID"),
        "ALIYUN_ACCESS_KEY_SECRET": os.environ.get("ALIYUN_ACCESS_KEY_SECRET"),
        # The API's address, scheme included (the tests point it at a loopback fake).
        "ALIYUN_SMS_ENDPOINT": os.environ.get("ALIYUN_SMS_ENDPOINT") or ALIYUN_SMS_ENDPOINT,
        "TENCENT_SECRET_ID": os.environ.get("TENCENT_SECRET_ID"),
        "TENCENT_SECRET_KEY": os.environ.get("TENCENT_SECRET_KEY"),
        "TENCENT_SMS_SDK_APP_ID": os.environ.get("TENCENT_SMS_SDK_APP_ID"),
        "TENCENT_SMS_REGION": os.environ.get("TENCENT_SMS_REGION") or "ap-guangzhou",
        "TENCENT_SMS_ENDPOINT": os.environ.get("TENCENT_SMS_ENDPOINT") or TENCENT_SMS_ENDPOINT,
        # Outgoing e-mail (login codes …). Without MAIL_SERVER, messages go to the log.
        "MAIL_SERVER": os.environ.get("MAIL_SERVER"),
        "MAIL_PORT": _number("MAIL_PORT", 587, int),
        "MAIL_USE_TLS": _flag("MAIL_USE_TLS", True),
        "MAIL_USERNAME": os.environ.get("MAIL_USERNAME"),
        "MAIL_PASSWORD": os.environ.get("MAIL_PASSWORD"),
        "MAIL_FROM": os.environ.get("MAIL_FROM", "Qunmen <noreply@localhost>"),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Secure cookies and HSTS: on unless in the demo (which runs on plain http).
        "SESSION_COOKIE_SECURE": _flag("SESSION_COOKIE_SECURE", None),
        "WTF_CSRF_TIME_LIMIT": None,
        # The public API and outgoing webhooks. Requests each API token may make a minute.
        "API_REQUESTS_PER_MINUTE": _number("API_REQUESTS_PER_MINUTE", 600, int),
        # Outgoing webhooks to private and loopback addresses: for the demo and the tests'
        # local receivers only (production refuses it: an endpoint could reach the
        # operator's own network).
        "WEBHOOKS_ALLOW_PRIVATE_URLS": _flag("WEBHOOKS_ALLOW_PRIVATE_URLS", False),
        # Communities' own payment keys, sealed at rest (core/secrets.py): Fernet keys,
        # comma-separated, the newest first (it seals; all unseal). Unset in the demo and
        # the tests: derived from SECRET_KEY. Production stops when community secrets are
        # stored and this is unset.
        "SECRETS_KEYS": os.environ.get("SECRETS_KEYS") or None,
        # The language of what is written outside a web request: the output of the
        # ``flask`` commands and the worker's own text (``zh_CN`` or ``en``). Messages to a
        # person are in that person's language whatever this says.
        "QUNMEN_LOCALE": os.environ.get("QUNMEN_LOCALE") or "zh_CN",
        # A new member's paid join applied by statements built once (membership/paid_join.py)
        # rather than through the ORM; off, every notification takes the ORM path (the two
        # are tested to write the same rows).
        "PAID_JOIN_FAST_PATH": _flag("PAID_JOIN_FAST_PATH", True),
        # PostgreSQL: the memory each sort and hash of an export's queries may take (its
        # ``work_mem``, for the export's transaction only), so that a month of a large
        # community's movements is sorted and joined in memory, not in temporary files.
        # Empty: the server's own setting.
        "EXPORT_WORK_MEM": os.environ.get("EXPORT_WORK_MEM", "64MB").strip(),
        # A new prospect's join form (a paid tier, a code to send) written by statements
        # built once (membership/fresh_application.py) rather than through the ORM; off,
        # every join form takes the ORM path (the two are tested to write the same rows).
        "JOIN_FAST_PATH": _flag("JOIN_FAST_PATH", True),
    }


def complete(config: MutableMapping[str, object], instance_path: str | Path) -> None:
    """Called by ``create_app`` once the environment's settings and the caller's are in:
    fills in what the demo may leave unset and raises :class:`SettingError` (naming the
    setting) for what production must not run without. Changes ``config`` in place."""
    instance_path = Path(instance_path)
    demo = bool(config["QUNMEN_DEMO"])
    production = not (demo or config.get("TESTING"))
    if demo:
        _protect_demo_files(instance_path, str(config["SQLALCHEMY_DATABASE_URI"]))
        config["SECRET_KEY"] = config.get("SECRET_KEY") or _demo_secret_key(instance_path)
        config["PUBLIC_BASE_URL"] = config.get("PUBLIC_BASE_URL") or DEMO_BASE_URL
    if not config.get("SECRET_KEY"):
        raise SettingError(
            "SECRET_KEY is not set: production needs one secret key, the same on every "
            "machine (or QUNMEN_DEMO=1 for the demo)"
        )
    if not config.get("PUBLIC_BASE_URL"):
        raise SettingError(
            "PUBLIC_BASE_URL is not set: production needs the address payers and payment "
            "providers reach it at, e.g. https://join.example.com"
        )
    config["PUBLIC_BASE_URL"] = _public_base_url(str(config["PUBLIC_BASE_URL"]))
    if config.get("SESSION_COOKIE_SECURE") is None:
        config["SESSION_COOKIE_SECURE"] = not demo
    if production and config.get("OUTBOX_TO_LOG"):
        raise SettingError("OUTBOX_TO_LOG is for the demo only: it writes login codes to the log")
    if production and config.get("WEBHOOKS_ALLOW_PRIVATE_URLS"):
        raise SettingError(
            "WEBHOOKS_ALLOW_PRIVATE_URLS is for the demo and the tests only: webhooks could "
            "reach private addresses"
        )
    _check_sms(config)
    _check_secrets_keys(config)
    _engine_options(config)
    _check_locale(config)
    _check_export_work_mem(config)


def _check_export_work_mem(config: MutableMapping[str, object]) -> None:
    """``EXPORT_WORK_MEM`` is empty or an amount of memory as PostgreSQL writes it."""
    value = str(config.get("EXPORT_WORK_MEM") or "")
    if value and not re.fullmatch(r"[1-9][0-9]*(kB|MB|GB)", value):
        raise SettingError(f"EXPORT_WORK_MEM={value!r} is not an amount such as 64MB or 512kB")


def _check_secrets_keys(config: MutableMapping[str, object]) -> None:
    """``SECRETS_KEYS``, when set, must be Fernet keys (the message never shows one)."""
    try:
        parse_keys(str(config.get("SECRETS_KEYS") or ""))
    except ValueError as error:
        raise SettingError(f"SECRETS_KEYS: {error}") from None


def _engine_options(config: MutableMapping[str, object]) -> None:
    """On PostgreSQL a connection taken from the pool is pinged first (one round trip): the
    server, or PgBouncer, may have closed it since. A SQLite connection is a file, never
    closed under us: nothing to ping. Behind PgBouncer in transaction mode, a connection's
    consecutive transactions may run on different server connections, so psycopg must not
    prepare statements (it prepares a query once it ran five times; the next server would
    not know it)."""
    if not str(config["SQLALCHEMY_DATABASE_URI"]).startswith("postgresql"):
        return
    options = {"pool_pre_ping": True, **config["SQLALCHEMY_ENGINE_OPTIONS"]}
    if config.get("DATABASE_PGBOUNCER"):
        options["connect_args"] = {**options.get("connect_args", {}), "prepare_threshold": None}
    config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def _check_sms(config: MutableMapping[str, object]) -> None:
    """An SMS provider, when one is named, must be one we know and have its keys."""
    provider = config.get("SMS_PROVIDER")
    if not provider:
        return
    if provider not in SMS_PROVIDER_SETTINGS:
        raise SettingError(
            f"SMS_PROVIDER={provider!r} is not an SMS provider: use "
            + " or ".join(SMS_PROVIDER_SETTINGS)
            + ", or leave it unset for no SMS"
        )
    for name in ("SMS_SIGN_NAME", *SMS_PROVIDER_SETTINGS[str(provider)]):
        if not config.get(name):
            raise SettingError(f"{name} is not set: SMS_PROVIDER={provider} needs it")
    name, default = SMS_ENDPOINT_SETTINGS[str(provider)]
    endpoint = str(config.get(name) or default)
    # A bare host means https, as the SDKs take it.
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise SettingError(f"{name}={endpoint!r} is not an API address like https://host[:port]")


def _check_locale(config: MutableMapping[str, object]) -> None:
    from core.i18n import LOCALES

    if config.setdefault("QUNMEN_LOCALE", "zh_CN") not in LOCALES:
        raise SettingError(f"QUNMEN_LOCALE must be one of {', '.join(LOCALES)}")
