"""The provider interface and the one registry of providers.

A provider starts a payment (tells us where to send the payer), turns a notification
request into a verified :class:`Notification` or refuses it, asks for a refund, and
answers questions about a payment's state. Providers never touch the database: the inbox
and the payment services do.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from flask import Flask, current_app, jsonify, url_for
from sqlalchemy.exc import OperationalError

from config import SettingError
from core.db import db
from core.money import Money

if TYPE_CHECKING:
    from flask import Response

    from payments.models import Payment, Refund


class EventKind(StrEnum):
    """What a verified notification says happened."""

    PAYMENT_SUCCEEDED = "payment_succeeded"
    PAYMENT_FAILED = "payment_failed"
    PAYMENT_CANCELLED = "payment_cancelled"
    PAYMENT_EXPIRED = "payment_expired"
    REFUND_SUCCEEDED = "refund_succeeded"
    REFUND_FAILED = "refund_failed"
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"
    #: Genuine, but nothing for us to do (an event type we do not act on, a checkout
    #: completed with its payment still pending …). Answered with success.
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified statement from a provider about one of our payments."""

    event_id: str  #: the provider's id for this event; the same on every redelivery
    kind: EventKind
    #: Our reference for the payment, when the event carries it.
    payment_public_id: str | None = None
    #: The provider's id for the payment (transaction id, payment intent …).
    payment_external_id: str | None = None
    #: Payment events: what moved. Refund events: the refund's amount. Disputes: the
    #: disputed amount.
    amount: Money | None = None
    #: Refund and dispute events: the whole payment's amount, which proves the payment
    #: succeeded when its own event has not arrived yet.
    payment_amount: Money | None = None
    #: Refund events: our reference for the refund and the provider's.
    refund_public_id: str | None = None
    refund_external_id: str | None = None
    #: Refund events from providers that report a running total (Stripe's
    #: ``amount_refunded``) instead of each refund.
    refunded_total: Money | None = None
    #: Dispute events: the provider's id for the dispute.
    dispute_external_id: str | None = None
    #: The provider's words (a failure's reason, a dispute's reason).
    reason: str | None = None


class InvalidNotification(Exception):
    """The request is not a genuine, well-formed notification: refuse it, change nothing."""


class ProviderError(Exception):
    """The provider refused a call or could not be reached; the message is for admins."""


@dataclass(frozen=True, slots=True)
class Payer:
    """What a provider may need to know of the person paying, taken from their request."""

    user_agent: str = ""
    client_ip: str = "127.0.0.1"
    #: The payer's WeChat openid under our official account, once OAuth gave it.
    wechat_openid: str | None = None

    @property
    def in_wechat(self) -> bool:
        return "MicroMessenger" in self.user_agent

    @property
    def on_phone(self) -> bool:
        return any(word in self.user_agent for word in ("Mobile", "Android", "iPhone"))


@dataclass(frozen=True, slots=True)
class PaymentStart:
    """Where to send the payer, and what to keep on the payment for the next step."""

    url: str
    method: str
    provider_data: dict[str, Any] = field(default_factory=dict)
    #: Provider ids known from the start (a checkout session id …).
    external_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RefundResult:
    """The provider's first answer to a refund request."""

    external_id: str | None
    #: True: done already; False: refused; None: the provider will notify us.
    succeeded: bool | None
    reason: str | None = None


class PaymentProvider(ABC):
    name: ClassVar[str]
    #: How payers see it on the join page: Chinese first.
    label: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> PaymentProvider | None:
        """The provider as the app's settings configure it; None when it is not."""

    def method_for(self, payer: Payer) -> str:
        """How ``payer`` will pay with this provider (one method unless overridden)."""
        return "default"

    @abstractmethod
    def start_payment(self, payment: Payment, payer: Payer) -> PaymentStart:
        """Register ``payment`` with the provider. Raises :class:`ProviderError`."""

    @abstractmethod
    def parse_notification(
        self, body: bytes, headers: Mapping[str, str], *, received_at: datetime
    ) -> Notification:
        """Verify and read a notification as received at ``received_at``.

        Raises :class:`InvalidNotification` for anything forged, stale or malformed.
        """

    @abstractmethod
    def request_refund(self, refund: Refund, transaction_id: str | None) -> RefundResult:
        """Ask the provider to refund part or all of the payment it knows as
        ``transaction_id``. Raises :class:`ProviderError`."""

    @abstractmethod
    def query_payment(self, payment: Payment, *, now: datetime) -> Notification | None:
        """Ask the provider what became of ``payment``: a notification-like answer, or
        None while it is still pending. Raises :class:`ProviderError`."""

    def close_payment(self, payment: Payment) -> None:  # noqa: B027 (optional hook)
        """Tell the provider an unpaid attempt will not be paid. Raises ProviderError."""

    def lookup_payment_public_id(self, external_id: str) -> str | None:
        """Our reference for the payment the provider calls ``external_id``, asked of the
        provider when an event names a payment we have not heard of yet."""
        return None

    def acknowledge(self, accepted: bool, message: str, status: int) -> Response:
        """The answer the provider expects; a non-2xx makes it deliver again."""
        response = jsonify({"received": accepted, "message": message})
        response.status_code = status
        return response


def _provider_classes() -> dict[str, type[PaymentProvider]]:
    from payments.providers.fake import FakeProvider
    from payments.providers.stripe import StripeProvider
    from payments.providers.wechatpay_v3 import WeChatPayV3Provider

    # WeChat Pay's from_config chooses its API version (v3 when configured, else v2).
    return {cls.name: cls for cls in (WeChatPayV3Provider, StripeProvider, FakeProvider)}


def init_providers(app: Flask) -> None:
    """Build the providers for this app; called once by ``create_app``.

    ``PAYMENT_PROVIDERS`` names them in order; when it is empty, every real provider whose
    keys are configured is offered. ``fake`` runs only in the demo (``QUNMEN_DEMO``), never
    next to a real provider, and is the demo's provider when no real one is configured.
    The tests (``TESTING``) may run it next to the real ones, all pointed at local fakes.
    Raises :class:`~config.SettingError` for any other mix, and when production would
    start with no real provider.
    """
    classes = _provider_classes()
    wanted = [name.strip() for name in app.config["PAYMENT_PROVIDERS"] if name.strip()]
    for name in wanted:
        if name not in classes:
            raise SettingError(f"unknown payment provider {name!r} in PAYMENT_PROVIDERS")
    demo = bool(app.config["QUNMEN_DEMO"])
    if "fake" in wanted and not app.testing:
        if not demo:
            raise SettingError("PAYMENT_PROVIDERS: fake is the demo's provider (QUNMEN_DEMO=1)")
        if len(wanted) > 1:
            raise SettingError("PAYMENT_PROVIDERS: fake is never offered next to a real one")
    enabled: dict[str, PaymentProvider] = {}
    for name in wanted or [n for n in classes if n != "fake"]:
        provider = classes[name].from_config(app.config)
        if provider is None and wanted:
            raise SettingError(f"payment provider {name!r} is enabled but not configured")
        if provider is not None:
            enabled[name] = provider
    if not enabled:
        if not (demo or app.testing):
            raise SettingError(
                "no payment provider is configured: set STRIPE_SECRET_KEY and "
                "STRIPE_WEBHOOK_SECRET or the WECHATPAY_* keys (QUNMEN_DEMO=1 for the demo)"
            )
        enabled["fake"] = classes["fake"].from_config(app.config)
    app.extensions["qunmen.payment_providers"] = enabled


def enabled_providers(community_id: int | None = None) -> dict[str, PaymentProvider]:
    """The providers offered to payers, in the configured order; for ``community_id``,
    with its own accounts in place of the install's (and after them, those it has and
    the install has not)."""
    install = current_app.extensions["qunmen.payment_providers"]
    if community_id is None:
        return install
    from payments.accounts import FIELDS

    names = [*install, *(name for name in FIELDS if name not in install)]
    offered = {name: get_provider(name, community_id) for name in names}
    return {name: provider for name, provider in offered.items() if provider is not None}


def get_provider(name: str | None, community_id: int | None = None) -> PaymentProvider | None:
    """The provider ``name`` as ``community_id`` uses it: built from the community's own
    account when it has one (kept per process while the account is unchanged), else the
    install's; None when neither is configured. Raises :class:`ProviderError` when the
    community's secrets cannot be unsealed or do not make a provider."""
    install = current_app.extensions["qunmen.payment_providers"].get(name) if name else None
    if community_id is None or name is None:
        return install
    from payments.accounts import account_of, fingerprint

    account = account_of(community_id, name)
    if account is None:
        return install
    cache = current_app.extensions.setdefault("qunmen.community_providers", {})
    held = fingerprint(account)
    cached = cache.get((community_id, name))
    if cached is not None and cached[0] == held:
        return cached[1]
    provider = build_community_provider(account)
    cache[(community_id, name)] = (held, provider)
    return provider


def build_community_provider(account) -> PaymentProvider:
    """The provider built from a community's account (a
    :class:`~payments.models.PaymentAccount`) alone. Raises :class:`ProviderError` when
    its secrets cannot be unsealed, or its settings are incomplete or wrong."""
    from core.secrets import SecretsUnavailable
    from payments.accounts import provider_settings

    try:
        provider = _provider_classes()[account.provider].from_config(provider_settings(account))
    except (SecretsUnavailable, SettingError) as error:
        raise ProviderError(str(error)) from error
    if provider is None:
        raise ProviderError(f"{account.provider}: the community's account is incomplete")
    return provider


def notify_url(provider_name: str, community_id: int) -> str:
    """Where ``provider_name`` sends notifications about a payment of ``community_id``:
    the URL names the community, whose keys verify them (see :mod:`payments.views`)."""
    return url_for(
        "webhooks.receive", provider_name=provider_name, community=community_id, _external=True
    )


def check_community_secrets(app: Flask) -> None:
    """Called by ``create_app``: refuse to start (:class:`~config.SettingError`) when
    communities' secrets are stored and no key in ``SECRETS_KEYS`` opens them. A
    database without the table yet (before ``flask db upgrade``) has none. The pool is
    left empty, as it was: a server that forks its workers after this shares no
    connection between them."""
    from core.secrets import SecretsUnavailable, keys_configured, unseal
    from payments.accounts import sealed_accounts

    with app.app_context():
        try:
            if not sa.inspect(db.session.connection()).has_table("payment_accounts"):
                return
            accounts = sealed_accounts()
        except OperationalError as error:
            logging.getLogger(__name__).warning("community secrets not checked: %s", error.orig)
            return
        finally:
            db.session.remove()
            db.engine.dispose()
        if accounts and not keys_configured():
            raise SettingError(
                f"SECRETS_KEYS is not set: {len(accounts)} communities' payment secrets are "
                "stored sealed and need the key they were sealed with"
            )
        try:
            for account in accounts:
                for token in account.sealed.values():
                    unseal(token)
        except SecretsUnavailable as error:
            raise SettingError(str(error)) from None
