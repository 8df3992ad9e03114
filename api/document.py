"""The machine endpoints outside ``/api/v1`` in the API's OpenAPI document: the health
check, and the webhooks the payment providers and Telegram call. Their views are plain
Flask views in their own packages; their bodies and answers are described here as
marshmallow schemas, added to the same generated document (``/api/v1/openapi.json``, and
``/openapi.yaml`` in YAML).

A webhook answers 2xx once the delivery is stored and applied (or known already), 4xx when
it is refused (its signature, its body, its size: nothing changes), 5xx when our side
failed and the sender must deliver again. To describe another webhook, add a
:class:`InboundWebhook` to :data:`WEBHOOKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import marshmallow as ma
from apispec import APISpec
from flask import Blueprint, Response, current_app
from werkzeug.routing import Map, Rule


class HealthSchema(ma.Schema):
    ok = ma.fields.Boolean(required=True)
    database = ma.fields.String(required=True, validate=ma.validate.OneOf(["ok", "unreachable"]))


class AnswerSchema(ma.Schema):
    received = ma.fields.Boolean(required=True)
    message = ma.fields.String(required=True)


class StripeEventSchema(ma.Schema):
    id = ma.fields.String(required=True)
    type = ma.fields.String(required=True)
    created = ma.fields.Integer()
    data = ma.fields.Nested(
        ma.Schema.from_dict({"object": ma.fields.Dict()}, name="StripeEventData"), required=True
    )


class FakeEventSchema(ma.Schema):
    id = ma.fields.String(required=True)
    type = ma.fields.String(required=True)
    created = ma.fields.Integer()
    data = ma.fields.Nested(
        ma.Schema.from_dict(
            {
                "out_trade_no": ma.fields.String(),
                "amount": ma.fields.Integer(),
                "currency": ma.fields.String(),
                "transaction_id": ma.fields.String(),
            },
            name="FakeEventData",
        ),
        required=True,
    )


class TelegramUpdateSchema(ma.Schema):
    update_id = ma.fields.Integer()
    chat_join_request = ma.fields.Dict()


class TelegramAnswerSchema(ma.Schema):
    ok = ma.fields.Boolean(required=True)


def _json(schema: str) -> dict:
    return {"application/json": {"schema": schema}}


#: A provider's webhook: applied (200), refused (4xx, nothing changed), or not applied on
#: our side (5xx: deliver again).
PROVIDER_ANSWERS = {
    "200": {
        "description": "Stored and applied, or a repeat",
        "content": _json("Answer"),
    },
    **{
        code: {"description": "Refused or not applied", "content": _json("Answer")}
        for code in ("400", "413", "500", "503")
    },
}
#: Refusals answered with the HTML error page.
PAGE = {"description": "Refused", "content": {"text/html": {"schema": {"type": "string"}}}}


@dataclass(frozen=True)
class InboundWebhook:
    """A webhook we receive: its path, what it is, the headers it must carry (its
    signature), the schema of its JSON body and its answers."""

    path: str
    summary: str
    headers: tuple[str, ...]
    body: str
    answers: dict = field(default_factory=lambda: PROVIDER_ANSWERS)


WEBHOOKS = [
    InboundWebhook(
        "/webhooks/stripe",
        "A Stripe event, signed with the endpoint's secret",
        ("Stripe-Signature",),
        "StripeEvent",
    ),
    InboundWebhook(
        "/webhooks/fake",
        "The demo cashier's notification, signed like Stripe's",
        ("Fake-Signature",),
        "FakeEvent",
    ),
    InboundWebhook(
        "/webhooks/telegram",
        "A Telegram Bot API update (join requests)",
        ("X-Telegram-Bot-Api-Secret-Token",),
        "TelegramUpdate",
        {
            "200": {
                "description": "Taken, or not one we act on",
                "content": _json("TelegramAnswer"),
            },
            "400": PAGE,
            "403": PAGE,
            "413": PAGE,
        },
    ),
]


def _rule(path: str) -> Rule:
    """The rule flask-smorest's plugin takes for a path (the views are not its own)."""
    rule = Rule(path)
    Map([rule])
    return rule


def describe_machine_endpoints(spec: APISpec) -> None:
    """Add the health check and :data:`WEBHOOKS` to ``spec``."""
    for name, schema in (
        ("Health", HealthSchema),
        ("Answer", AnswerSchema),
        ("StripeEvent", StripeEventSchema),
        ("FakeEvent", FakeEventSchema),
        ("TelegramUpdate", TelegramUpdateSchema),
        ("TelegramAnswer", TelegramAnswerSchema),
    ):
        spec.components.schema(name, schema=schema)
    health = {"content": _json("Health")}
    spec.path(
        rule=_rule("/healthz"),
        operations={
            "get": {
                "summary": "Whether the app and its database answer",
                "tags": ["machine"],
                "security": [],
                "responses": {
                    "200": {"description": "Up", **health},
                    "503": {"description": "The database does not answer", **health},
                },
            }
        },
    )
    for hook in WEBHOOKS:
        spec.path(
            rule=_rule(hook.path),
            operations={
                "post": {
                    "summary": hook.summary,
                    "tags": ["machine"],
                    "security": [],
                    "parameters": [
                        {
                            "name": name,
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                        for name in hook.headers
                    ],
                    "requestBody": {"required": True, "content": _json(hook.body)},
                    "responses": hook.answers,
                }
            },
        )


document = Blueprint("openapi_yaml", __name__)


@document.get("/openapi.yaml")
def openapi_yaml():
    """The same generated document in YAML."""
    spec = current_app.extensions["qunmen.api"].spec
    return Response(spec.to_yaml(), mimetype="application/yaml")
