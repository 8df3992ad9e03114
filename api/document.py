"""The machine endpoints outside ``/api/v1`` in the API's OpenAPI document: the health
check, and the webhooks the payment providers and Telegram call. Their views are plain
Flask views in their own packages; their bodies and answers are described here as
marshmallow schemas, added to the same generated document (``/api/v1/openapi.json``, and
``/openapi.yaml`` in YAML).

A webhook answers 2xx once the delivery is stored and applied (or known already), 4xx when
it is refused (its signature, its body, its size: nothing changes), 5xx when our side
failed and the sender must deliver again. To describe another webhook, add a
:class:`InboundWebhook` to :data:`WEBHOOKS`. A payment provider's webhook is described at
every path the app's URL map routes to the inbox's door (``webhooks.receive``): the
install's, and, for the providers a community may hold its own account at, the one that
names the community whose keys verify it.

WeChat Pay calls one path with two formats: API v2's XML (signed in its body, answered in
XML) and API v3's JSON (signed in the ``Wechatpay-*`` headers, answered ``204`` or with a
JSON ``FAIL``). Which answer a delivery gets depends on the credentials, not on what it
claims to be: an install with v2 keys only answers everything in XML, one with v3 keys
only in JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import marshmallow as ma
from apispec import APISpec
from flask import Blueprint, Response, current_app
from werkzeug.routing import Map, Rule

from payments.accounts import FIELDS as ACCOUNT_FIELDS


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


def _xml(name: str) -> dict:
    """How an XML document's root element is named (OpenAPI's ``xml`` keyword)."""
    return {"xml": {"name": name}}


class WeChatPayV2NotificationSchema(ma.Schema):
    """API v2's notification, ``<xml>`` with one element per field: a payment's result
    signed in ``sign`` with the API key, or a refund's result encrypted in ``req_info``.
    It may carry fields besides these (coupons, attach …): they are signed with the rest."""

    class Meta:
        unknown = ma.INCLUDE

    return_code = ma.fields.String(required=True, metadata={"example": "SUCCESS"})
    return_msg = ma.fields.String()
    appid = ma.fields.String(required=True)
    mch_id = ma.fields.String(required=True)
    nonce_str = ma.fields.String(required=True)
    sign = ma.fields.String(metadata={"description": "MD5 or HMAC-SHA256 with the API key"})
    sign_type = ma.fields.String()
    result_code = ma.fields.String()
    err_code = ma.fields.String()
    err_code_des = ma.fields.String()
    openid = ma.fields.String()
    trade_type = ma.fields.String()
    bank_type = ma.fields.String()
    total_fee = ma.fields.Integer(metadata={"description": "Fen"})
    fee_type = ma.fields.String()
    cash_fee = ma.fields.Integer()
    transaction_id = ma.fields.String()
    out_trade_no = ma.fields.String(metadata={"description": "Our payment's public id"})
    time_end = ma.fields.String()
    req_info = ma.fields.String(
        metadata={"description": "A refund's result, AES-256-ECB under the API key's MD5"}
    )


class WeChatPayV2AnswerSchema(ma.Schema):
    """What API v2 expects back: ``SUCCESS`` ends its deliveries, ``FAIL`` asks for
    another one."""

    return_code = ma.fields.String(required=True, validate=ma.validate.OneOf(["SUCCESS", "FAIL"]))
    return_msg = ma.fields.String(required=True)


class WeChatPayV3ResourceSchema(ma.Schema):
    algorithm = ma.fields.String(required=True, metadata={"example": "AEAD_AES_256_GCM"})
    ciphertext = ma.fields.String(required=True)
    associated_data = ma.fields.String()
    original_type = ma.fields.String()
    nonce = ma.fields.String(required=True)


class WeChatPayV3NotificationSchema(ma.Schema):
    """API v3's notification: its ``resource`` is the payment's or the refund's result,
    encrypted with the APIv3 key; the body is signed in the ``Wechatpay-*`` headers."""

    class Meta:
        unknown = ma.INCLUDE

    id = ma.fields.String(required=True)
    create_time = ma.fields.String(required=True)
    event_type = ma.fields.String(required=True, metadata={"example": "TRANSACTION.SUCCESS"})
    resource_type = ma.fields.String(required=True, metadata={"example": "encrypt-resource"})
    summary = ma.fields.String()
    resource = ma.fields.Nested(WeChatPayV3ResourceSchema, required=True)


class WeChatPayV3AnswerSchema(ma.Schema):
    """API v3's answer to a delivery it must send again."""

    code = ma.fields.String(required=True, validate=ma.validate.OneOf(["FAIL"]))
    message = ma.fields.String(required=True)


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
#: A provider the install does not take, or a path naming no community (by its id or
#: slug), is not found.
NOT_FOUND = {
    "description": "No such provider here, or the path names no community",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
#: WeChat Pay's answers: in v2's XML or v3's JSON, by the install's credentials (see the
#: module's docstring).
WECHATPAY_REFUSED = {
    "text/xml": {"schema": "WeChatPayV2Answer"},
    "application/json": {"schema": "WeChatPayV3Answer"},
}
WECHATPAY_ANSWERS = {
    "200": {
        "description": "API v2: stored and applied, or a repeat (return_code SUCCESS)",
        "content": {"text/xml": {"schema": "WeChatPayV2Answer"}},
    },
    "204": {"description": "API v3: stored and applied, or a repeat"},
    **{
        code: {"description": "Refused or not applied (FAIL)", "content": WECHATPAY_REFUSED}
        for code in ("400", "413", "500", "503")
    },
}
#: API v3's signature headers; a delivery without ``Wechatpay-Signature`` is API v2's.
WECHATPAY_V3_HEADERS = (
    "Wechatpay-Timestamp",
    "Wechatpay-Nonce",
    "Wechatpay-Signature",
    "Wechatpay-Serial",
    "Wechatpay-Signature-Type",
)


@dataclass(frozen=True)
class InboundWebhook:
    """A webhook we receive: its path, what it is, the headers it must carry (its
    signature), the schema of its JSON body and its answers."""

    path: str
    summary: str
    headers: tuple[str, ...]
    #: The schema of its body, by media type.
    body: dict
    answers: dict = field(default_factory=lambda: PROVIDER_ANSWERS)
    #: Headers only some of its deliveries carry.
    optional_headers: tuple[str, ...] = ()


WEBHOOKS = [
    InboundWebhook(
        "/webhooks/stripe",
        "A Stripe event, signed with the endpoint's secret",
        ("Stripe-Signature",),
        _json("StripeEvent"),
    ),
    InboundWebhook(
        "/webhooks/wechatpay",
        "A WeChat Pay notification: API v2's XML signed in its body, or API v3's JSON "
        "signed in the Wechatpay-* headers (with its resource encrypted)",
        (),
        {
            "text/xml": {"schema": "WeChatPayV2Notification"},
            "application/json": {"schema": "WeChatPayV3Notification"},
        },
        WECHATPAY_ANSWERS,
        optional_headers=WECHATPAY_V3_HEADERS,
    ),
    InboundWebhook(
        "/webhooks/fake",
        "The demo cashier's notification, signed like Stripe's",
        ("Fake-Signature",),
        _json("FakeEvent"),
    ),
    InboundWebhook(
        "/webhooks/telegram",
        "A Telegram Bot API update (join requests)",
        ("X-Telegram-Bot-Api-Secret-Token",),
        _json("TelegramUpdate"),
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


#: The inbox's door, the view every payment provider's webhook comes to.
RECEIVE_ENDPOINT = "webhooks.receive"
#: Its path parameter naming the community whose keys verify a delivery.
COMMUNITY_PARAMETER = {
    "name": "community",
    "in": "path",
    "description": "The community's id or slug: its own account's keys verify the delivery, "
    "the install's when it has none at this provider",
}


def _rule(path: str) -> Rule:
    """The rule flask-smorest's plugin takes for a path (the views are not its own)."""
    rule = Rule(path, defaults={})  # the plugin reads the defaults of a path's variables
    Map([rule])
    return rule


def _paths(hook: InboundWebhook, url_map: Map) -> list[tuple[Rule, str, dict]]:
    """Each path ``hook`` is received at, with its summary and answers: its own, and when
    the URL map routes it to the inbox's door (:data:`RECEIVE_ENDPOINT`) for a provider a
    community may hold its own account at, the door's path naming the community."""
    endpoint, arguments = url_map.bind("localhost").match(hook.path, method="POST")
    if endpoint != RECEIVE_ENDPOINT:
        return [(_rule(hook.path), hook.summary, hook.answers)]
    answers = {**hook.answers, "404": NOT_FOUND}
    paths = [(_rule(hook.path), hook.summary, answers)]
    provider = arguments["provider_name"]
    if provider not in ACCOUNT_FIELDS:
        return paths
    summary = f"{hook.summary}, verified with the keys of the community it names"
    for rule in url_map.iter_rules(RECEIVE_ENDPOINT):
        if "community" not in (rule.defaults or {}):
            path = rule.rule.replace("<provider_name>", provider)
            paths.append((_rule(path), summary, answers))
    return paths


def describe_machine_endpoints(spec: APISpec, url_map: Map) -> None:
    """Add the health check and :data:`WEBHOOKS` (their paths as ``url_map`` routes them)
    to ``spec``."""
    for name, schema, component in (
        ("Health", HealthSchema, None),
        ("Answer", AnswerSchema, None),
        ("StripeEvent", StripeEventSchema, None),
        ("FakeEvent", FakeEventSchema, None),
        ("WeChatPayV2Notification", WeChatPayV2NotificationSchema, _xml("xml")),
        ("WeChatPayV2Answer", WeChatPayV2AnswerSchema, _xml("xml")),
        ("WeChatPayV3Notification", WeChatPayV3NotificationSchema, None),
        ("WeChatPayV3Answer", WeChatPayV3AnswerSchema, None),
        ("TelegramUpdate", TelegramUpdateSchema, None),
        ("TelegramAnswer", TelegramAnswerSchema, None),
    ):
        spec.components.schema(name, component, schema=schema)
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
        headers = [(name, True) for name in hook.headers]
        headers += [(name, False) for name in hook.optional_headers]
        for rule, summary, answers in _paths(hook, url_map):
            spec.path(
                rule=rule,
                parameters=[dict(COMMUNITY_PARAMETER)] if "community" in rule.arguments else [],
                operations={
                    "post": {
                        "summary": summary,
                        "tags": ["machine"],
                        "security": [],
                        "parameters": [
                            {
                                "name": name,
                                "in": "header",
                                "required": required,
                                "schema": {"type": "string"},
                            }
                            for name, required in headers
                        ],
                        "requestBody": {"required": True, "content": hook.body},
                        "responses": answers,
                    }
                },
            )


document = Blueprint("openapi_yaml", __name__)


@document.get("/openapi.yaml")
def openapi_yaml():
    """The same generated document in YAML."""
    spec = current_app.extensions["qunmen.api"].spec
    return Response(spec.to_yaml(), mimetype="application/yaml")
