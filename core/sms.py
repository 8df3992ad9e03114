"""Text messages through the configured provider's approved templates."""

from __future__ import annotations

from typing import Protocol

from flask import Flask


class SmsError(OSError):
    """The provider refused or could not be reached; the message says why (never a secret)."""


class SmsSender(Protocol):
    name: str

    def send(self, phone: str, kind: str, params: dict[str, str], out_id: str) -> str:
        """Send the template configured for message ``kind`` to ``phone`` with ``params``;
        ``out_id`` is the provider's idempotency field. Returns the provider's id."""


def sms_sender(app: Flask) -> SmsSender | None:
    """The configured sender, or None when SMS is not configured."""
    return app.extensions.get("qunmen.sms")
