"""The endpoints programs call keep to their OpenAPI description, generated from the code
(``/api/v1/openapi.json``, the same in YAML at ``/openapi.yaml``): the public API, the
health check and the inbound webhooks. schemathesis generates requests from it, valid and
not, and checks every answer — never a server error, only documented status codes, media
types and bodies."""

from __future__ import annotations

import pytest
import schemathesis
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from api.models import SCOPES
from api.tokens import create_token
from app import create_app
from core.clock import utcnow
from core.db import db
from membership.models import Community
from membership.telegram import SECRET_HEADER
from tests.helpers import join_and_pay

TELEGRAM_SECRET = "telegram-webhook-secret"
DOCUMENT = "/api/v1/openapi.json"


def _generated_document() -> dict:
    """The document an app makes (no database is needed for it)."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "document",
            "PUBLIC_BASE_URL": "http://qunmen.test",
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "PAYMENT_PROVIDERS": ["fake"],
        }
    )
    return app.extensions["qunmen.api"].spec.to_dict()


PATHS = _generated_document()["paths"]
OPERATIONS = [
    (method.upper(), path)
    for path, methods in PATHS.items()
    for method in methods
    if method in ("get", "post")
]
#: Requests that break the description, for the operations that take any input.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in schemathesis.GenerationMode
    if mode is schemathesis.GenerationMode.POSITIVE
    or "requestBody" in PATHS[path][method.lower()]
    or PATHS[path].get("parameters")
    or PATHS[path][method.lower()].get("parameters")
]


def test_the_document_is_served_as_json_and_yaml(client):
    document = client.get(DOCUMENT)
    assert document.status_code == 200
    assert document.json["openapi"] == "3.1.0"
    assert document.json["paths"].keys() == PATHS.keys()
    same = client.get("/openapi.yaml")
    assert same.mimetype == "application/yaml"
    assert yaml.safe_load(same.data) == document.json
    assert {"/healthz", "/webhooks/stripe", "/webhooks/fake", "/webhooks/telegram"} <= PATHS.keys()
    assert {"/api/v1/members", "/api/v1/events"} <= PATHS.keys()


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_each_operation_keeps_to_its_description(app, demo, method, path, mode):
    """Requests that fit the description (positive) and requests that break it (negative),
    the API's with a token of every scope on a community with a paid member."""
    api = path.startswith("/api/")
    if api:
        join_and_pay(app.test_client(), "main")
        with app.app_context():
            community_id = db.session.scalar(sa.select(Community.id))
            _token, secret = create_token(
                community_id, "schemathesis", list(SCOPES), actor="test", now=utcnow()
            )
            db.session.commit()
    operation = schemathesis.openapi.from_wsgi(DOCUMENT, app)[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=150 if not api else 60, deadline=None, suppress_health_check=list(HealthCheck)
    )
    def check(case):
        excluded = []
        if path.startswith("/webhooks/"):
            # A well-shaped delivery is still refused (400) without a valid signature,
            # which cannot be generated from the schema.
            excluded.append(positive_data_acceptance)
        if path == "/webhooks/telegram":
            # With Telegram's secret, the generated updates reach the parsing behind it.
            case.headers = {**(case.headers or {}), SECRET_HEADER: TELEGRAM_SECRET}
            # An update we do not act on is acknowledged whatever its other fields, so
            # that Telegram does not deliver it again and again.
            excluded.append(negative_data_rejection)
        # The token as the caller's own (schemathesis then also checks that requests
        # without it, or with a wrong one, are refused) — unless the case is one whose
        # headers break the description, which for the API means one without a token.
        unauthorised = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
        token = {"Authorization": f"Bearer {secret}"} if api and not unauthorised else None
        case.call_and_validate(headers=token, excluded_checks=excluded)

    check()
