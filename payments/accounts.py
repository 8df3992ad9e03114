"""Communities' own payment accounts: which settings each provider takes from a community,
saving and clearing them (secrets sealed, see :mod:`core.secrets`), the settings a
provider is built from, and re-sealing every secret under a new key.

A community without an account at a provider uses the install's keys for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app, has_request_context, request
from flask_babel import lazy_gettext as _l

from config import SettingError
from core import audit
from core.clock import utcnow
from core.db import db
from core.secrets import hint, reseal, seal, unseal
from payments.models import PaymentAccount


@dataclass(frozen=True, slots=True)
class AccountField:
    """One setting a community may give for a provider, by the install's setting name."""

    name: str
    label: Any
    secret: bool = False
    #: PEM text (a multi-line field).
    pem: bool = False


#: What each provider takes from a community, in the order the page shows it. WeChat Pay's
#: v2 refund certificate (``WECHATPAY_MCH_CERT``/``_KEY``, file paths) is the install's
#: only: a community refunds through API v3.
FIELDS: dict[str, tuple[AccountField, ...]] = {
    "wechatpay": (
        AccountField("WECHATPAY_APP_ID", _l("Official account app id")),
        AccountField("WECHATPAY_APP_SECRET", _l("Official account secret"), secret=True),
        AccountField("WECHATPAY_MCH_ID", _l("Merchant id")),
        AccountField("WECHATPAY_API_KEY", _l("API key (v2)"), secret=True),
        AccountField("WECHATPAY_V3_KEY", _l("APIv3 key"), secret=True),
        AccountField(
            "WECHATPAY_MCH_PRIVATE_KEY", _l("Merchant API private key (PEM)"), secret=True, pem=True
        ),
        AccountField("WECHATPAY_MCH_CERT_SERIAL", _l("Merchant certificate serial number")),
        AccountField("WECHATPAY_PLATFORM_PUBLIC_KEY", _l("Platform public key (PEM)"), pem=True),
        AccountField("WECHATPAY_PLATFORM_PUBLIC_KEY_ID", _l("Platform public key id")),
    ),
    "stripe": (
        AccountField("STRIPE_SECRET_KEY", _l("Secret key"), secret=True),
        AccountField("STRIPE_WEBHOOK_SECRET", _l("Webhook signing secret"), secret=True),
    ),
}
#: Install settings a community's provider shares with the install's: API addresses.
_SHARED_SETTINGS = (
    "STRIPE_API_BASE",
    "WECHATPAY_API_BASE",
    "WECHATPAY_V3_API_BASE",
    "WECHAT_API_BASE",
)


#: Built once: every payment page of a community runs it.
_ACCOUNTS_OF_COMMUNITY = sa.select(PaymentAccount).where(
    PaymentAccount.community_id == sa.bindparam("community_id")
)
#: Where a request keeps what it read of communities' accounts (see :func:`accounts_of`).
_READ = "qunmen.payment_accounts"


def accounts_of(community_id: int) -> dict[str, PaymentAccount]:
    """The community's own accounts, by provider: one SELECT for every provider, kept for
    the rest of the request. That it has none holds for the whole request (as if read when
    it began); accounts held are kept for the request's current transaction only, so that
    one deleted meanwhile is never refreshed. Outside a request (the worker, a command)
    nothing is kept: each call reads."""
    read = _read_in_this_request()
    kept = read.get(community_id) if read is not None else None
    if kept is not None and kept[0] in (None, db.session().get_transaction()):
        return kept[1]
    accounts = {
        account.provider: account
        for account in db.session.scalars(_ACCOUNTS_OF_COMMUNITY, {"community_id": community_id})
    }
    if read is not None:
        read[community_id] = (db.session().get_transaction() if accounts else None, accounts)
    return accounts


def holds_accounts(community_id: sa.ColumnElement[int]) -> sa.Exists:
    """Whether the community whose id is ``community_id`` (a column of a page's own
    SELECT of its community) holds an account: read with the community, at no statement
    of its own; a page that reads False says so with :func:`holds_none`."""
    return sa.exists().where(PaymentAccount.community_id == community_id)


def holds_none(community_id: int) -> None:
    """Called by a page that read with its community that the community holds no account
    (see :func:`holds_accounts`): the request asks nothing more about them."""
    if (read := _read_in_this_request()) is not None:
        read[community_id] = (None, {})


def _read_in_this_request() -> dict[int, tuple[Any, dict[str, PaymentAccount]]] | None:
    return request.environ.setdefault(_READ, {}) if has_request_context() else None


def _forget_read(community_id: int) -> None:
    """Called when the request changes the community's accounts: read them again."""
    if (read := _read_in_this_request()) is not None:
        read.pop(community_id, None)


def account_of(community_id: int, provider: str) -> PaymentAccount | None:
    """The community's own account at ``provider``, or None (it uses the install's;
    always for a provider that takes no accounts, like ``fake``: nothing is asked)."""
    if provider not in FIELDS:
        return None
    return accounts_of(community_id).get(provider)


def fingerprint(account: PaymentAccount) -> str:
    """What ``account`` holds, as text: it differs after any change (a sealed value is
    sealed afresh each time, even when it is the same secret)."""
    return json.dumps([account.id, account.settings, account.sealed], sort_keys=True)


def provider_settings(account: PaymentAccount) -> dict[str, Any]:
    """The settings ``account``'s provider is built from, secrets unsealed: the
    community's own and the install's API addresses, never the install's keys. Raises
    :class:`~core.secrets.SecretsUnavailable`, and :class:`~config.SettingError` for a
    PEM setting that is not PEM text."""
    config = current_app.config
    settings: dict[str, Any] = {name: config.get(name) for name in _SHARED_SETTINGS}
    settings["WECHATPAY_PLATFORM_CERT_DIR"] = (
        f"{config['WECHATPAY_PLATFORM_CERT_DIR']}/community-{account.community_id}"
    )
    settings.update(account.settings)
    settings.update({name: unseal(token) for name, token in account.sealed.items()})
    for field in FIELDS[account.provider]:
        # The install's PEM settings may name a file; a community's never: it would have
        # us read a file of the server.
        if field.pem and settings.get(field.name) and not _is_pem(settings[field.name]):
            raise SettingError(f"{field.name} is not PEM text (-----BEGIN …)")
    return settings


def _is_pem(text: str) -> bool:
    return text.lstrip().startswith("-----BEGIN ")


def save_account(
    community_id: int,
    provider: str,
    *,
    plain: Mapping[str, str],
    secrets: Mapping[str, str],
    cleared: set[str],
    actor: str,
    now: datetime | None = None,
) -> PaymentAccount:
    """Set the community's account at ``provider``: the plain settings as given (empty:
    unset), each secret typed (a secret left empty keeps what was saved), each one in
    ``cleared`` removed. The audit entry names the settings changed, never a value.
    Flushes; the caller checks the result builds a provider, then commits."""
    now = now or utcnow()
    names = {field.name for field in FIELDS[provider]}
    account = account_of(community_id, provider)
    if account is None:
        account = PaymentAccount(
            community_id=community_id, provider=provider, settings={}, sealed={}, hints={}
        )
        db.session.add(account)
        _forget_read(community_id)
        action = "payment_account.created"
    else:
        action = "payment_account.updated"
    settings = {name: value.strip() for name, value in plain.items() if name in names and value}
    sealed, hints = dict(account.sealed), dict(account.hints)
    for name in cleared & names:
        sealed.pop(name, None)
        hints.pop(name, None)
    for name, value in secrets.items():
        if name in names and value.strip():
            sealed[name], hints[name] = seal(value.strip()), hint(value)
    changed = sorted(
        {n for n in names if account.settings.get(n) != settings.get(n)}
        | {n for n in names if account.sealed.get(n) != sealed.get(n)}
    )
    account.settings, account.sealed, account.hints = settings, sealed, hints
    account.updated_at, account.updated_by = now, actor
    audit.record(
        action, account, actor=actor, data={"provider": provider, "changed": changed}, now=now
    )
    return account


def remove_account(account: PaymentAccount, *, actor: str, now: datetime | None = None) -> None:
    """Delete the community's account: its orders use the install's keys again."""
    audit.record(
        "payment_account.removed",
        account,
        actor=actor,
        data={"provider": account.provider, "community": account.community_id},
        now=now,
    )
    db.session.delete(account)
    _forget_read(account.community_id)


def reseal_all(*, actor: str, now: datetime | None = None) -> int:
    """Seal every stored secret again under the newest key of ``SECRETS_KEYS`` (the
    others must still open them). Flushes; returns how many accounts were resealed.
    Raises :class:`~core.secrets.SecretsUnavailable` (then roll back: nothing changed)."""
    now = now or utcnow()
    accounts = db.session.scalars(sa.select(PaymentAccount).order_by(PaymentAccount.id)).all()
    count = 0
    for account in accounts:
        if not account.sealed:
            continue
        account.sealed = {name: reseal(token) for name, token in account.sealed.items()}
        audit.record(
            "payment_account.resealed",
            account,
            actor=actor,
            data={"provider": account.provider, "secrets": len(account.sealed)},
            now=now,
        )
        count += 1
    db.session.flush()
    return count


def sealed_accounts() -> list[PaymentAccount]:
    """Every account holding a sealed secret."""
    accounts = db.session.scalars(sa.select(PaymentAccount).order_by(PaymentAccount.id))
    return [account for account in accounts if account.sealed]
