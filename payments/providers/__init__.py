"""The provider interface and the one registry of providers.

A provider starts a payment (tells us where to send the payer) and turns a notification
request into a verified :class:`Notification`, or refuses it. Providers never touch the
database: the inbox and the payment services do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from flask import Flask, current_app, jsonify

from core.money import Money

if TYPE_CHECKING:
    from flask import Response

    from payments.models import Payment


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified statement from a provider about one of our payments."""

    event_id: str  #: the provider's id for this event; the same on every redelivery
    outcome: Outcome
    payment_public_id: str  #: our reference, as we gave it to the provider
    amount: Money  #: what the provider says moved
    external_id: str | None  #: the provider's transaction id
    reason: str | None = None  #: the provider's words for a failure


class InvalidNotification(Exception):
    """The request is not a genuine, well-formed notification: refuse it, change nothing."""


class PaymentProvider(ABC):
    name: ClassVar[str]
    #: How payers see it on the join page: Chinese first.
    label: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, object]) -> PaymentProvider:
        """The provider as the app's settings configure it."""

    @abstractmethod
    def start_payment(self, payment: Payment) -> str:
        """Register ``payment`` with the provider; return the URL to send the payer to."""

    @abstractmethod
    def parse_notification(
        self, body: bytes, headers: Mapping[str, str], *, received_at: datetime
    ) -> Notification:
        """Verify and read a notification as received at ``received_at``.

        Raises :class:`InvalidNotification` for anything forged, stale or malformed.
        """

    def acknowledge(self, accepted: bool, message: str, status: int) -> Response:
        """The answer the provider expects; a non-2xx makes it deliver again."""
        response = jsonify({"received": accepted, "message": message})
        response.status_code = status
        return response


def init_providers(app: Flask) -> None:
    """Build the providers named in ``PAYMENT_PROVIDERS`` for this app."""
    from payments.providers.fake import FakeProvider

    available: dict[str, type[PaymentProvider]] = {FakeProvider.name: FakeProvider}
    enabled: dict[str, PaymentProvider] = {}
    for name in app.config["PAYMENT_PROVIDERS"]:
        name = name.strip()
        if name not in available:
            raise RuntimeError(f"unknown payment provider {name!r} in PAYMENT_PROVIDERS")
        enabled[name] = available[name].from_config(app.config)
    app.extensions["qunmen.payment_providers"] = enabled


def enabled_providers() -> dict[str, PaymentProvider]:
    """The providers offered to payers, in the configured order."""
    return current_app.extensions["qunmen.payment_providers"]


def get_provider(name: str) -> PaymentProvider | None:
    return enabled_providers().get(name)
