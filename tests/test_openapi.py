"""The endpoints programs call keep to their OpenAPI description, generated from the code
(``/api/v1/openapi.json``, the same in YAML at ``/openapi.yaml``): the public API, the
health check and the inbound webhooks (WeChat Pay's v2 XML and v3 JSON, and each
provider's path naming a community). schemathesis generates requests from it, valid and
not, and checks every answer — never a server error, only documented status codes, media
types and bodies; a webhook delivery it makes (unsigned) or we forge is refused with a
documented answer and changes nothing."""

from __future__ import annotations

import pytest
import schemathesis
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from api.models import SCOPES
from api.tokens import create_token
from app import create_app
from core.clock import utcnow
from core.db import db
from membership.models import Community, Member
from membership.telegram import SECRET_HEADER
from payments.models import InboxStatus, Payment, WebhookEvent
from perks.cli import DEMO_COUPON, seed_demo_perks
from tests import fake_apis
from tests.conftest import app_config, dispose_engines
from tests.helpers import (
    join_and_pay,
    money_snapshot,
    wechat_paid,
    wechat_v3_delivery,
    wechat_v3_paid,
    wechat_v3_transaction,
)
from tests.test_payment_accounts import (
    A_API_KEY,
    A_APP_ID,
    A_MCH_ID,
    give_wechatpay,
    started_payment,
    wechat_paid_as,
)

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


#: WeChat Pay's paths: the install's and the one naming a community.
WECHATPAY_PATHS = ["/webhooks/wechatpay", "/webhooks/wechatpay/{community}"]
#: Deliveries the inbox took: what a refused one must not add to.
TAKEN = (InboxStatus.PROCESSED, InboxStatus.DUPLICATE, InboxStatus.IGNORED)


def test_the_document_is_served_as_json_and_yaml(client):
    document = client.get(DOCUMENT)
    assert document.status_code == 200
    assert document.json["openapi"] == "3.1.0"
    assert document.json["paths"].keys() == PATHS.keys()
    same = client.get("/openapi.yaml")
    assert same.mimetype == "application/yaml"
    assert yaml.safe_load(same.data) == document.json
    assert {"/healthz", "/webhooks/stripe", "/webhooks/fake", "/webhooks/telegram"} <= PATHS.keys()
    assert {*WECHATPAY_PATHS, "/webhooks/stripe/{community}"} <= PATHS.keys()
    assert {"/api/v1/members", "/api/v1/events"} <= PATHS.keys()


def test_the_document_is_valid_openapi_3_1(client):
    """Checked against the OpenAPI 3.1 meta-schema (by schemathesis' own validation)."""
    schemathesis.openapi.from_dict(client.get(DOCUMENT).json).validate()


def test_wechat_pay_is_described_in_both_its_formats():
    """v2's XML (its root element named as WeChat Pay names it) and v3's JSON, with the
    answers each expects: v2's XML SUCCESS, v3's 204, and FAIL in either when refused."""
    post = PATHS["/webhooks/wechatpay"]["post"]
    assert post["requestBody"]["content"].keys() == {"text/xml", "application/json"}
    assert post["responses"]["200"]["content"].keys() == {"text/xml"}
    assert "content" not in post["responses"]["204"]
    assert post["responses"]["400"]["content"].keys() == {"text/xml", "application/json"}
    assert {p["name"] for p in post["parameters"]} >= {"Wechatpay-Signature", "Wechatpay-Serial"}
    community = PATHS["/webhooks/wechatpay/{community}"]
    assert [p["name"] for p in community["parameters"]] == ["community"]
    assert community["post"]["responses"]["404"]["content"].keys() == {"text/html"}
    assert "/webhooks/fake/{community}" not in PATHS  # no community holds a fake account


def untouched(app) -> dict:
    """What a refused delivery must leave as it was: payments, orders, members, access,
    the ledger, and the deliveries the inbox took."""
    with app.app_context():
        taken = db.session.scalar(
            sa.select(sa.func.count(WebhookEvent.id)).where(WebhookEvent.status.in_(TAKEN))
        )
    return {**money_snapshot(app), "taken": taken}


def keeps_to_its_description(app, method: str, path: str, mode, *, token: str | None = None):
    """schemathesis' requests for one operation, valid (positive) or not (negative), each
    answer checked against the document. A webhook's are refused, changing nothing; on a
    path naming a community, the valid ones name the demo community (a random name is a
    404, documented, and reaches nothing). ``token``: the API's, of every scope."""
    api = path.startswith("/api/")
    operation = schemathesis.openapi.from_wsgi(DOCUMENT, app)[path][method]
    before = untouched(app)

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
        if "{community}" in path and mode is schemathesis.GenerationMode.POSITIVE:
            case.path_parameters = {**(case.path_parameters or {}), "community": "demo"}
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
        headers = {"Authorization": f"Bearer {token}"} if api and not unauthorised else None
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    check()
    if not api:
        assert untouched(app) == before


def api_token(app) -> str:
    """A token of every scope of the demo community, which has a paid member."""
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
        _token, secret = create_token(
            community_id, "schemathesis", list(SCOPES), actor="test", now=utcnow()
        )
        db.session.commit()
    return secret


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_each_operation_keeps_to_its_description(app, demo, method, path, mode):
    """Requests that fit the description (positive) and requests that break it (negative),
    the API's with a token of every scope on a community with a paid member; the
    webhooks' next to a paid member, whom they leave as they were."""
    token = api_token(app)
    keeps_to_its_description(app, method, path, mode, token=token)


def forged(app, path: str, body: bytes, headers: dict, community: str | None = None):
    """``body`` with ``headers`` posted to WeChat Pay's ``path`` as a schemathesis case of
    the document (naming ``community``), its answer checked against the document; the
    answer."""
    operation = schemathesis.openapi.from_wsgi(DOCUMENT, app)[path]["POST"]
    media_type = headers.get("Content-Type", "text/xml")
    case = operation.Case(
        body=body,
        media_type=media_type,
        headers={k: v for k, v in headers.items() if k != "Content-Type"},
        path_parameters={"community": community} if community else None,
    )
    return case.call_and_validate(excluded_checks=[positive_data_acceptance])


def wechat_payment(app, community_id: int) -> Payment:
    """A ¥99 WeChat Pay payment of the community waiting for its notification
    (detached)."""
    public_id = started_payment(app, community_id, "wechatpay")
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == public_id))
        db.session.expunge(payment)
        return payment


def test_forged_wechat_pay_v2_notifications_are_refused_as_documented(app, demo, apis):
    """v2's XML signed with a key that is not the one the path names (another key to the
    install's path, and the install's key to the path of a community with its own
    merchant) is refused with the documented XML FAIL, changing nothing; the genuine one
    is answered with the documented XML SUCCESS."""
    join_and_pay(app.test_client(), "main")
    payment = wechat_payment(app, demo.id)
    before = untouched(app)
    wrong_key = wechat_paid_as(
        payment, app_id=fake_apis.WECHAT_APP_ID, mch_id=fake_apis.WECHAT_MCH_ID, key=A_API_KEY
    )
    for community in (None, "demo", str(demo.id)):
        path = WECHATPAY_PATHS[community is not None]
        answer = forged(app, path, wrong_key, {"Content-Type": "text/xml"}, community)
        assert answer.status_code == 400
        assert answer.headers["content-type"][0].startswith("text/xml")
        assert b"<return_code><![CDATA[FAIL]]></return_code>" in answer.content
    assert untouched(app) == before
    give_wechatpay(app, apis, demo.id)
    own = wechat_payment(app, demo.id)
    before = untouched(app)
    answer = forged(app, WECHATPAY_PATHS[1], wechat_paid(own), {}, "demo")
    assert answer.status_code == 400
    assert untouched(app) == before
    genuine = wechat_paid_as(own, app_id=A_APP_ID, mch_id=A_MCH_ID, key=A_API_KEY)
    answer = forged(app, WECHATPAY_PATHS[1], genuine, {}, "demo")
    assert answer.status_code == 200
    assert b"SUCCESS" in answer.content
    assert untouched(app) != before


#: WeChat Pay's paths on an install with API v3 credentials (and its v2 key still set).
V3_CASES = [(path, mode) for path in WECHATPAY_PATHS for mode in schemathesis.GenerationMode]


class TestWeChatPayV3:
    """The same paths when the install's WeChat Pay is API v3: JSON deliveries are answered
    in v3's JSON (v2's XML still in XML)."""

    @pytest.fixture(scope="class")
    @classmethod
    def app(cls, app, _api_server):
        """The app of the other tests' database with WeChat Pay v3 credentials too; the
        rollback of each test wraps its engines."""
        state, certs = _api_server
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        settings = app_config(url, state, certs) | fake_apis.wechatpay_v3_settings(state.base_url)
        v3 = create_app(settings)
        with v3.app_context():
            db.session.configure(join_transaction_mode="create_savepoint")
        yield v3
        dispose_engines(v3)

    @pytest.mark.parametrize(("path", "mode"), V3_CASES)
    def test_wechat_pay_keeps_to_its_description(self, app, demo, path, mode):
        join_and_pay(app.test_client(), "main")
        keeps_to_its_description(app, "POST", path, mode)

    def test_forged_v3_notifications_are_refused_as_documented(self, app, demo):
        """v3's JSON signed with another RSA key, or of another time, is refused with the
        documented JSON FAIL, changing nothing; the genuine one gets the documented 204."""
        payment = wechat_payment(app, demo.id)
        before = untouched(app)
        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        resource = wechat_v3_transaction(payment)
        forgeries = [
            wechat_v3_delivery("TRANSACTION.SUCCESS", resource, key=other_key),
            wechat_v3_delivery(
                "TRANSACTION.SUCCESS", resource, timestamp=int(utcnow().timestamp()) - 600
            ),
        ]
        for (body, headers), community in zip(forgeries, (None, "demo"), strict=True):
            answer = forged(app, WECHATPAY_PATHS[community is not None], body, headers, community)
            assert answer.status_code == 400
            assert answer.json()["code"] == "FAIL"
        assert untouched(app) == before
        body, headers = wechat_v3_paid(payment)
        answer = forged(app, WECHATPAY_PATHS[1], body, headers, "demo")
        assert (answer.status_code, answer.content) == (204, b"")
        assert untouched(app) != before


# Stateful: the API's operations chained by the links the document declares -------------

#: The links a stateful run walks, as ``operation → (link, operation)``: a member looked up
#: leads to their memberships, invitations and coupons; a membership granted to its end; a
#: coupon issued to the member's coupons; a page to the next.
DECLARED_LINKS = {
    ("list_members", "Member", "get_member"),
    ("list_members", "NextPage", "list_members"),
    ("list_members", "IssueCoupon", "issue_coupon"),
    ("list_members", "GrantMembership", "grant_membership"),
    ("get_member", "Invitations", "member_invitations"),
    ("get_member", "GrantMembership", "grant_membership"),
    ("get_member", "EndMembership", "end_membership"),
    ("get_member", "IssueCoupon", "issue_coupon"),
    ("grant_membership", "End", "end_membership"),
    ("issue_coupon", "Coupons", "member_coupons"),
    ("list_events", "NextPage", "list_events"),
    ("list_orders", "NextPage", "list_orders"),
    ("list_perks", "Redeem", "redeem_perk"),
}


def declared_links() -> set[tuple[str, str, str]]:
    return {
        (operation["operationId"], name, link["operationId"])
        for methods in PATHS.values()
        for operation in methods.values()
        if isinstance(operation, dict) and "operationId" in operation
        for answer in operation["responses"].values()
        for name, link in answer.get("links", {}).items()
    }


def test_the_api_declares_its_links():
    assert declared_links() >= DECLARED_LINKS


def test_linked_operations_hold_together(app, demo):
    """schemathesis' state machine walks the declared links: each answer checked against
    the document, and what the scenario did against what it reads back (see Workflow).
    The requests that take a body are given the community's real tier, coupon and
    member, and the members list is asked for everyone, so that grants, coupons and
    redemptions succeed and the links from them are walked too (their bodies and the
    list's filters are fuzzed by the tests above). Bounded: 60 scenarios of at most 8
    calls."""
    token = api_token(app)
    with app.app_context():
        seed_demo_perks()
        db.session.commit()
        member_id = db.session.scalar(sa.select(Member.id).where(Member.number.is_not(None)))
    schema = schemathesis.openapi.from_wsgi(DOCUMENT, app).include(path_regex="^/api/")
    realistic = {
        "grant_membership": {"tier": "lobby", "reason": "schemathesis"},
        "issue_coupon": {"code": DEMO_COUPON},
        "redeem_perk": {"member_id": member_id},
    }

    @schema.auth()
    class Token:
        """The token of every scope, as the caller's own."""

        def get(self, case, context):
            return token

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    with app.app_context():
        connection = db.engines[None]  # the test's, inside its transaction

    class Workflow(schema.as_state_machine()):
        """Each scenario starts from the same state (its changes are rolled back to a
        savepoint after it): Hypothesis replays and shrinks scenarios, which must then
        meet what they met the first time. Besides schemathesis' checks, what a scenario
        did must show: a coupon issued is among the member's coupons, a membership just
        granted can be ended once."""

        def setup(self):
            self.savepoint = connection.begin_nested()
            self.issued: dict[int, set[str]] = {}
            self.granted: set[int] = set()

        def teardown(self):
            self.savepoint.rollback()

        def before_call(self, case):
            operation = case.operation.definition.raw.get("operationId")
            if operation in realistic:
                case.body = dict(realistic[operation])
            if operation == "list_members":
                case.query = {}  # the first page of everyone: its links lead to a member

        def call(self, case, **kwargs):
            response = super().call(case, **kwargs)
            operation = case.operation.definition.raw.get("operationId")
            status, ids = response.status_code, case.path_parameters or {}
            # schemathesis also sends calls with a broken token on purpose (its ignored-auth
            # check): what the caller sees is checked for the caller's own token.
            own = (case.headers or {}).get("Authorization") == f"Bearer {token}"
            if operation == "issue_coupon" and status == 201:
                self.issued.setdefault(ids["member_id"], set()).add(case.body["code"])
            if operation == "member_coupons" and own and ids.get("member_id") in self.issued:
                assert status == 200, response.text
                codes = {coupon["code"] for coupon in response.json()}
                assert codes >= self.issued[ids["member_id"]]
            if operation == "grant_membership" and status == 201:
                self.granted.add(response.json()["id"])
            if operation == "end_membership" and own and ids.get("membership_id") in self.granted:
                assert status == 200, response.text
                self.granted.remove(ids["membership_id"])
            return response

    Workflow.run(
        settings=settings(
            max_examples=60,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
    )
