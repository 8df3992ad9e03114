"""Secrets at rest: what a community gives us that must never be read from the database
by whoever reads the database (payment keys, …), sealed with Fernet under a key from
the settings.

``SECRETS_KEYS`` is a comma-separated list of Fernet keys, the newest first: the first
seals, every one unseals (``MultiFernet``). To rotate, put a new key in front
(``SECRETS_KEYS="new,old"``), restart, run ``flask payments rotate-secrets`` (every
sealed value is sealed again under the new key), then drop the old key. In the demo and
the tests, with ``SECRETS_KEYS`` unset, the key is derived from ``SECRET_KEY``;
production has no such fallback (see :func:`config.complete`).

A sealed value is shown to no one again: pages show :func:`hint` (that one is set, and
its last four characters at most). Nothing here logs, and every value unsealed is
redacted from the logs from then on (:func:`core.observability.keep_out_of_logs`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app

from core.observability import keep_out_of_logs

#: Shown in a hint in place of the characters that are not shown.
_HIDDEN = "••••"


class SecretsUnavailable(RuntimeError):
    """No key is configured to seal with, or none of the configured keys unseals a value
    (a key was dropped before ``rotate-secrets`` ran). The message names the setting and
    never the value."""


def parse_keys(raw: str) -> list[Fernet]:
    """The Fernet keys of a ``SECRETS_KEYS`` value, newest first. Raises ValueError for a
    malformed key (the message says which position, never the key)."""
    keys = []
    for position, text in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not text:
            continue
        try:
            keys.append(Fernet(text.encode()))
        except (ValueError, TypeError):
            raise ValueError(
                f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes; "
                "make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from None
    return keys


def _derived_key(secret_key: str) -> Fernet:
    """The demo's and the tests' key: derived from ``SECRET_KEY``, never the key itself."""
    digest = hmac.new(secret_key.encode(), b"qunmen.secrets-at-rest", hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def keys_configured() -> bool:
    """Whether this app can seal and unseal (keys configured, or derived outside
    production)."""
    return bool(_keys())


def _keys() -> list[Fernet]:
    config = current_app.config
    keys = parse_keys(config.get("SECRETS_KEYS") or "")
    if not keys and (config.get("QUNMEN_DEMO") or config.get("TESTING")):
        keys = [_derived_key(str(config["SECRET_KEY"]))]
    return keys


def _fernet() -> MultiFernet:
    keys = _keys()
    if not keys:
        raise SecretsUnavailable("SECRETS_KEYS is not set: secrets cannot be stored or read")
    return MultiFernet(keys)


def seal(plain: str) -> str:
    """``plain`` encrypted under the newest key, as text to store."""
    return _fernet().encrypt(plain.encode()).decode()


def unseal(token: str) -> str:
    """The value :func:`seal` sealed. Raises :class:`SecretsUnavailable` when no
    configured key opens it."""
    try:
        plain = _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretsUnavailable(
            "no key in SECRETS_KEYS opens a stored secret: was a key dropped before "
            "`flask payments rotate-secrets` ran?"
        ) from None
    keep_out_of_logs(plain)
    return plain


def reseal(token: str) -> str:
    """``token`` sealed again under the newest key (the old one must still be
    configured). Raises :class:`SecretsUnavailable` like :func:`unseal`."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretsUnavailable("no key in SECRETS_KEYS opens a stored secret") from None


def hint(plain: str) -> str:
    """What a page may show of a secret once it is saved: its last four characters
    behind dots, or only the dots for a short one or for PEM text (whose tail is the
    same for every key)."""
    text = plain.strip()
    if len(text) < 12 or text.startswith("-----"):
        return _HIDDEN
    return _HIDDEN + text[-4:]
