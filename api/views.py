"""``/api/v1``: the resources a community's programs read and change.

Built with flask-smorest: each view declares its arguments and its answer as marshmallow
schemas, which parse and check the request, shape the answer and make the OpenAPI 3.1
document served at ``/api/v1/openapi.json`` — the document is the code, it cannot drift.
(apispec alone would leave the parsing, the checking and the answer's shape to us, and the
document would say what we wrote in docstrings, not what the views do.)

Every view acts for the community of the request's token, and only with its scopes; what
belongs to another community is answered as not found. Writes go through the services the
admin pages use, audited as ``token:<name>``, and honour ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from functools import wraps
from http import HTTPStatus

import marshmallow as ma
import sqlalchemy as sa
from flask import Blueprint as FlaskBlueprint
from flask import Flask, Response, current_app, g, json, request
from flask_babel import gettext as _
from flask_smorest import Api, Blueprint
from flask_smorest.spec.plugins import integerconverter2paramschema
from flask_smorest.utils import prepare_response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload
from werkzeug.exceptions import HTTPException, default_exceptions
from werkzeug.routing import IntegerConverter, PathConverter

from api.document import describe_machine_endpoints, document
from api.models import IdempotentAnswer
from api.problems import PROBLEM_TYPE, Problem, handle_http_exception, problem_response
from api.tokens import authenticate
from core import audit
from core.clock import utcnow
from core.db import db
from core.events import Event
from core.i18n import answer_in_accepted_language
from core.limits import TooManyTries
from core.security import csrf
from membership.lifecycle import end_by_hand, grant_by_hand
from membership.models import (
    CURRENT_MEMBERSHIP_STATUSES,
    ContactKind,
    Invitation,
    Member,
    Membership,
    Tier,
)
from membership.services import JoinRefused, find_member, find_member_by_openid
from payments.models import Order
from perks.coupons import grant_coupon
from perks.eligibility import standing_of
from perks.models import Coupon, CouponGrant, Perk
from perks.services import PerkRefused, redeem

PREFIX = "/api/v1"
#: The largest id a path takes (nine digits, under PostgreSQL's integer): a larger one is
#: not found, never a database error.
MAX_ID = 999_999_999
#: How long an answer is kept for its ``Idempotency-Key``.
IDEMPOTENCY_WINDOW = timedelta(hours=24)


class QunmenApi(Api):
    """flask-smorest, with errors as problem+json and only inside the API: the admin and
    H5 pages keep their own error pages."""

    def _register_error_handlers(self) -> None:
        """Each API blueprint handles its own errors (see :func:`register`)."""

    def _register_responses(self) -> None:
        """flask-smorest's error answers (each status, and the default), as problem+json."""
        for status in HTTPStatus:
            response = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_TYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


class IdConverter(IntegerConverter):
    """A row's id in a path: 1 to :data:`MAX_ID`. Anything else matches no route (the
    catch-all's 404) by the pattern alone: a converter's refusal would end the matching
    with the app's HTML 404 instead."""

    regex = r"[1-9]\d{0,8}"

    def __init__(self, map) -> None:
        super().__init__(map, min=1, max=MAX_ID)


class ProblemSchema(ma.Schema):
    type = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String(required=True)
    errors = ma.fields.Dict()


QunmenApi.ERROR_SCHEMA = ProblemSchema

#: The language of an API answer whose client asks for none we have (or any): English.
#: The API's readers are developers, whose lingua franca it is, and its document is in
#: English; a client that wants Chinese sends ``Accept-Language: zh-CN``.
API_LOCALE = "en"

blp = Blueprint(
    "api_v1",
    __name__,
    url_prefix=PREFIX,
    description="Members, memberships, orders, perks and events",
)


# By status code too: Flask prefers the app's handlers of a code (its HTML error pages) to
# a blueprint's handler of a class.
for _code in (*default_exceptions, HTTPException):
    blp.register_error_handler(_code, handle_http_exception)


@blp.before_request
def _authenticate() -> None:
    """Every API request carries a live token of the community it acts for."""
    try:
        token = authenticate(request.headers.get("Authorization"), now=utcnow())
    except TooManyTries as refused:
        raise Problem(429, _("Too many requests: slow down")) from refused
    if token is None:
        raise Problem(401, _("A valid API token is needed"))
    g.api_token = token


def scope(needed: str):
    """Mark a view as needing the token's ``needed`` scope; without it, a 403."""

    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            if needed not in g.api_token.scopes:
                raise Problem(403, _("The token lacks the scope %(scope)s", scope=needed))
            return view(*args, **kwargs)

        return checked

    return decorate


def write(view):
    """A POST: committed once it succeeds; with an ``Idempotency-Key``, its answer is kept
    for 24 hours and given again to the same token's same key with the same request — the
    same key with another request is a 422. A repeat arriving while the first runs waits
    for it (the key's row is taken first) and then gets its answer."""

    @wraps(view)
    def run(*args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if not key:
            response = view(*args, **kwargs)
            db.session.commit()
            return response
        if len(key) > 255:
            raise Problem(400, _("Idempotency-Key is too long"))
        token, now = g.api_token, utcnow()
        digest = hashlib.sha256(
            b"\n".join([request.method.encode(), request.path.encode(), request.get_data()])
        ).hexdigest()
        stored = _stored_answer(token.id, key, digest, now=now)
        if stored is not None:
            return stored
        db.session.add(
            IdempotentAnswer(
                token_id=token.id, key=key, request_hash=digest, status=0, body={}, created_at=now
            )
        )
        try:
            db.session.flush()
        except IntegrityError:
            db.session.rollback()  # another request took the key first and has committed
            return _stored_answer(token.id, key, digest, now=now)
        response = view(*args, **kwargs)
        answer = db.session.get(IdempotentAnswer, (token.id, key))
        answer.status, answer.body = response.status_code, response.get_json()
        db.session.commit()
        return response

    return run


def _stored_answer(token_id: int, key: str, digest: str, *, now):
    """The answer kept for the token's key, or None; the token's answers older than
    :data:`IDEMPOTENCY_WINDOW` go first (so the table keeps a day of each token's keys)."""
    db.session.execute(
        sa.delete(IdempotentAnswer).where(
            IdempotentAnswer.token_id == token_id,
            IdempotentAnswer.created_at <= now - IDEMPOTENCY_WINDOW,
        )
    )
    stored = db.session.get(IdempotentAnswer, (token_id, key))
    if stored is None:
        return None
    if stored.request_hash != digest:
        raise Problem(422, _("This Idempotency-Key was used for another request"))
    response = json_response(stored.body, stored.status)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def json_response(body, status: int):
    return current_app.response_class(json.dumps(body), status=status, mimetype="application/json")


# Schemas ---------------------------------------------------------------------------------


class Text(ma.fields.String):
    """A string a request gives: without NUL characters, which PostgreSQL's text cannot
    hold (refused with the other field errors, not a database error; the document says so
    by a pattern)."""

    def __init__(self, **kwargs) -> None:
        kwargs["metadata"] = {"pattern": r"^[^\x00]*$", **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ma.ValidationError(_("NUL characters are not allowed"))
        return text


class PageArgs(ma.Schema):
    after = ma.fields.Integer(
        load_default=0,
        validate=ma.validate.Range(min=0, max=MAX_ID),
        metadata={"description": "The previous page's next"},
    )
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=200))


class MemberFilter(PageArgs):
    number = ma.fields.String(  # its pattern has no room for a NUL
        validate=ma.validate.Regexp(r"^\d{1,9}$"),
        metadata={"description": "A member number, e.g. 42"},
    )
    contact = Text(
        validate=ma.validate.Length(min=3, max=254),
        metadata={"description": "A phone number or e-mail address"},
    )
    openid = Text(validate=ma.validate.Length(min=1, max=64))
    tier = Text(
        validate=ma.validate.Length(max=40), metadata={"description": "Holds this tier (its code)"}
    )
    current = ma.fields.Boolean(metadata={"description": "Holds a current membership"})


class MembershipSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    tier = ma.fields.Function(lambda m: m.tier.code, required=True)
    status = ma.fields.Function(lambda m: m.status.value, required=True)
    starts_at = ma.fields.AwareDateTime(required=True)
    ends_at = ma.fields.AwareDateTime(allow_none=True)


class MemberSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    number = ma.fields.Integer(allow_none=True)
    number_label = ma.fields.String(allow_none=True)
    staff_number_label = ma.fields.String(allow_none=True)
    display_name = ma.fields.String(required=True)
    created_at = ma.fields.AwareDateTime(required=True)
    memberships = ma.fields.List(ma.fields.Nested(MembershipSchema), required=True)


class MemberPage(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(MemberSchema), required=True)
    next = ma.fields.Integer(allow_none=True, required=True)


class GrantArgs(ma.Schema):
    tier = Text(required=True, validate=ma.validate.Length(min=1, max=40))
    reason = Text(required=True, validate=ma.validate.Length(min=1, max=200))


class EndArgs(ma.Schema):
    reason = Text(required=True, validate=ma.validate.Length(min=1, max=200))


class InvitationSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    membership_id = ma.fields.Integer(required=True)
    group = ma.fields.Function(lambda i: i.group.name if i.group else None, allow_none=True)
    status = ma.fields.Function(lambda i: i.status.value, required=True)
    issued_at = ma.fields.AwareDateTime(allow_none=True)


class PaymentSchema(ma.Schema):
    id = ma.fields.String(attribute="public_id", required=True)
    provider = ma.fields.String(required=True)
    amount = ma.fields.Integer(required=True)
    currency = ma.fields.String(required=True)
    status = ma.fields.Function(lambda p: p.status.value, required=True)
    confirmed_at = ma.fields.AwareDateTime(allow_none=True)


class OrderSchema(ma.Schema):
    id = ma.fields.String(attribute="public_id", required=True)
    member_id = ma.fields.Integer(allow_none=True)
    product = ma.fields.String(required=True)
    amount = ma.fields.Integer(required=True, metadata={"description": "Minor units (fen, cents)"})
    currency = ma.fields.String(required=True)
    status = ma.fields.Function(lambda o: o.status.value, required=True)
    created_at = ma.fields.AwareDateTime(required=True)
    paid_at = ma.fields.AwareDateTime(allow_none=True)
    payments = ma.fields.List(ma.fields.Nested(PaymentSchema), required=True)


class OrderPage(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(OrderSchema), required=True)
    next = ma.fields.Integer(allow_none=True, required=True)


class PerkSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    name = ma.fields.String(required=True)
    kind = ma.fields.Function(lambda p: p.kind.value, required=True)
    active = ma.fields.Boolean(required=True)
    left = ma.fields.Integer(allow_none=True)


class RedeemArgs(ma.Schema):
    member_id = ma.fields.Integer(required=True, validate=ma.validate.Range(min=1, max=MAX_ID))


class RedemptionSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    perk_id = ma.fields.Integer(required=True)
    member_id = ma.fields.Integer(required=True)
    created_at = ma.fields.AwareDateTime(required=True)


class CouponArgs(ma.Schema):
    code = Text(required=True, validate=ma.validate.Length(min=1, max=40))


class CouponIssued(ma.Schema):
    code = ma.fields.String(required=True)
    member_id = ma.fields.Integer(required=True)
    issued = ma.fields.Boolean(required=True, metadata={"description": "False: held already"})


class MemberCouponSchema(ma.Schema):
    """A coupon issued to a member (by the API, an admin or a perk)."""

    code = ma.fields.Function(lambda g: g.coupon.code, required=True)
    percent_off = ma.fields.Function(lambda g: g.coupon.percent_off, allow_none=True)
    amount_off = ma.fields.Function(
        lambda g: g.coupon.amount_off,
        allow_none=True,
        metadata={"description": "Minor units of currency"},
    )
    currency = ma.fields.Function(lambda g: g.coupon.currency, required=True)
    valid_until = ma.fields.Function(
        lambda g: g.coupon.valid_until, allow_none=True, metadata={"format": "date-time"}
    )
    issued_at = ma.fields.AwareDateTime(attribute="created_at", required=True)


class EventSchema(ma.Schema):
    cursor = ma.fields.Integer(attribute="id", required=True)
    id = ma.fields.String(attribute="public_id", required=True)
    type = ma.fields.String(required=True)
    created_at = ma.fields.AwareDateTime(required=True)
    data = ma.fields.Dict(required=True)


class EventPage(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(EventSchema), required=True)
    next = ma.fields.Integer(allow_none=True, required=True)


# Views -----------------------------------------------------------------------------------

ERRORS = (400, 401, 403, 429)


def documented(*codes: int):
    """Declare the error answers of a view beyond those of every view, and name its
    operation after the view (what links between operations name)."""

    def decorate(view):
        for code in (*ERRORS, *codes):
            view = blp.alt_response(code, response=HTTPStatus(code).name)(view)
        return blp.doc(operationId=view.__name__)(view)

    return decorate


def links(status: int, **named: tuple[str, dict[str, str]]):
    """Declare the OpenAPI links of a view's ``status`` answer: each name's operation (a
    view's name) and its parameters, taken from this answer by runtime expressions
    (``$response.body#/id``). What a client, or schemathesis' stateful tests, may call
    next with what this answer gave."""
    return blp.doc(
        responses={
            status: {
                "links": {
                    name: {"operationId": operation, "parameters": parameters}
                    for name, (operation, parameters) in named.items()
                }
            }
        }
    )


def _next_page(operation: str) -> tuple[str, dict[str, str]]:
    """The link from a page to the next one."""
    return operation, {"after": "$response.body#/next"}


def _of_member(operation: str, member_id: str) -> tuple[str, dict[str, str]]:
    return operation, {"member_id": f"$response.body#{member_id}"}


def _page(rows, limit: int) -> dict:
    items = list(rows[:limit])
    return {"items": items, "next": items[-1].id if len(rows) > limit else None}


def _member(member_id: int) -> Member:
    member = db.session.get(Member, member_id)
    if member is None or member.community_id != g.api_token.community_id:
        raise Problem(404, _("No such member"))
    return member


@blp.route("/members")
@scope("members:read")
@blp.arguments(MemberFilter, location="query", as_kwargs=True, unknown=ma.RAISE)
@blp.response(200, MemberPage)
@links(
    200,
    NextPage=_next_page("list_members"),
    Member=_of_member("get_member", "/items/0/id"),
    Invitations=_of_member("member_invitations", "/items/0/id"),
    Coupons=_of_member("member_coupons", "/items/0/id"),
    GrantMembership=_of_member("grant_membership", "/items/0/id"),
    IssueCoupon=_of_member("issue_coupon", "/items/0/id"),
)
@documented()
def list_members(after: int, limit: int, **filters):
    """Members, in join order, filtered."""
    community_id = g.api_token.community_id
    query = sa.select(Member).where(Member.community_id == community_id, Member.id > after)
    if "number" in filters:
        query = query.where(Member.number == int(filters["number"]))
    if "contact" in filters:
        value = filters["contact"]
        kind = ContactKind.EMAIL if "@" in value else ContactKind.PHONE
        found = find_member(community_id, kind, value)
        query = query.where(Member.id == (found.id if found else None))
    if "openid" in filters:
        found = find_member_by_openid(community_id, filters["openid"])
        query = query.where(Member.id == (found.id if found else None))
    if "tier" in filters or "current" in filters:
        held = sa.select(Membership.member_id).join(Tier, Tier.id == Membership.tier_id)
        if "tier" in filters:
            held = held.where(Tier.code == filters["tier"])
        if filters.get("current"):
            held = held.where(Membership.status.in_(CURRENT_MEMBERSHIP_STATUSES))
        condition = Member.id.in_(held)
        query = query.where(condition if filters.get("current", True) else ~condition)
    return _member_page(query, limit)


#: A members page's columns, as :class:`MemberSchema` writes them.
_MEMBER_COLUMNS = (
    Member.id,
    Member.number,
    Member.number_label,
    Member.staff_number_label,
    Member.display_name,
    Member.created_at,
)
#: The memberships of a page's members, as :class:`MembershipSchema` writes them.
_PAGE_MEMBERSHIPS = (
    sa.select(
        Membership.member_id,
        Membership.id,
        Tier.code,
        Membership.status,
        Membership.starts_at,
        Membership.ends_at,
    )
    .join(Tier, Tier.id == Membership.tier_id)
    .where(Membership.member_id.in_(sa.bindparam("members", expanding=True)))
    .order_by(Membership.id)
)


def _member_page(query: sa.Select, limit: int) -> Response:
    """The members list's page (``query``: its members, filtered) as :class:`MemberPage`
    dumps it, read by two statements of columns and written as JSON directly: loading 50
    members with their memberships into the ORM and dumping them through marshmallow
    were two thirds of a page's cost (cProfile of 399 pages). A test compares the two."""
    rows = db.session.execute(
        query.with_only_columns(*_MEMBER_COLUMNS).order_by(Member.id).limit(limit + 1)
    ).all()
    items = [
        {
            "id": row.id,
            "number": row.number,
            "number_label": row.number_label,
            "staff_number_label": row.staff_number_label,
            "display_name": row.display_name,
            "created_at": row.created_at.isoformat(),
            "memberships": [],
        }
        for row in rows[:limit]
    ]
    held = {item["id"]: item["memberships"] for item in items}
    if held:
        for row in db.session.execute(_PAGE_MEMBERSHIPS, {"members": list(held)}):
            held[row.member_id].append(
                {
                    "id": row.id,
                    "tier": row.code,
                    "status": row.status.value,
                    "starts_at": row.starts_at.isoformat(),
                    "ends_at": row.ends_at.isoformat() if row.ends_at else None,
                }
            )
    page = {"items": items, "next": items[-1]["id"] if len(rows) > limit else None}
    return json_response(page, 200)


@blp.route("/members/<id:member_id>")
@scope("members:read")
@blp.response(200, MemberSchema)
@links(
    200,
    Invitations=_of_member("member_invitations", "/id"),
    Coupons=_of_member("member_coupons", "/id"),
    GrantMembership=_of_member("grant_membership", "/id"),
    EndMembership=("end_membership", {"membership_id": "$response.body#/memberships/0/id"}),
    IssueCoupon=_of_member("issue_coupon", "/id"),
)
@documented(404)
def get_member(member_id: int):
    """One member, with their memberships."""
    return _member(member_id)


@blp.route("/members/<id:member_id>/invitations")
@scope("members:read")
@blp.response(200, InvitationSchema(many=True))
@documented(404)
def member_invitations(member_id: int):
    """A member's invitations to groups."""
    member = _member(member_id)
    return db.session.scalars(
        sa.select(Invitation).where(Invitation.member_id == member.id).order_by(Invitation.id)
    ).all()


@blp.route("/members/<id:member_id>/memberships", methods=["POST"])
@scope("members:write")
@blp.arguments(GrantArgs)
@write
@blp.response(201, MembershipSchema)
@links(201, End=("end_membership", {"membership_id": "$response.body#/id"}))
@documented(404, 409)
def grant_membership(args: dict, member_id: int):
    """Grant a member a tier, without payment, with a reason."""
    member = _member(member_id)
    tier = db.session.scalar(
        sa.select(Tier).where(Tier.community_id == member.community_id, Tier.code == args["tier"])
    )
    if tier is None:
        raise Problem(404, _("No such tier"))
    try:
        return grant_by_hand(member, tier, reason=args["reason"], actor=g.api_token.actor)
    except JoinRefused as refusal:
        db.session.rollback()
        raise Problem(409, str(refusal)) from refusal


@blp.route("/memberships/<id:membership_id>/end", methods=["POST"])
@scope("members:write")
@blp.arguments(EndArgs)
@write
@blp.response(200, MembershipSchema)
@documented(404, 409)
def end_membership(args: dict, membership_id: int):
    """End a membership, with a reason; its invitations are revoked."""
    membership = db.session.get(Membership, membership_id)
    if membership is None or membership.member.community_id != g.api_token.community_id:
        raise Problem(404, _("No such membership"))
    try:
        end_by_hand(membership, reason=args["reason"], actor=g.api_token.actor)
    except JoinRefused as refusal:
        db.session.rollback()
        raise Problem(409, str(refusal)) from refusal
    return membership


@blp.route("/orders")
@scope("orders:read")
@blp.arguments(PageArgs, location="query", as_kwargs=True, unknown=ma.RAISE)
@blp.response(200, OrderPage)
@links(200, NextPage=_next_page("list_orders"))
@documented()
def list_orders(after: int, limit: int):
    """Orders, oldest first, each with its payments."""
    rows = db.session.scalars(
        sa.select(Order)
        .where(Order.community_id == g.api_token.community_id, Order.id > after)
        .options(selectinload(Order.payments))
        .order_by(Order.id)
        .limit(limit + 1)
    ).all()
    return _page(rows, limit)


@blp.route("/perks")
@scope("perks:read")
@blp.response(200, PerkSchema(many=True))
@links(200, Redeem=("redeem_perk", {"perk_id": "$response.body#/0/id"}))
@documented()
def list_perks():
    """The community's perks."""
    return db.session.scalars(
        sa.select(Perk).where(Perk.community_id == g.api_token.community_id).order_by(Perk.id)
    ).all()


@blp.route("/perks/<id:perk_id>/redemptions", methods=["POST"])
@scope("perks:write")
@blp.arguments(RedeemArgs)
@write
@blp.response(201, RedemptionSchema)
@links(201, Member=_of_member("get_member", "/member_id"))
@documented(404, 409)
def redeem_perk(args: dict, perk_id: int):
    """Redeem a perk for a member (their eligibility and the stock hold)."""
    perk = db.session.get(Perk, perk_id)
    if perk is None or perk.community_id != g.api_token.community_id:
        raise Problem(404, _("No such perk"))
    member = _member(args["member_id"])
    now = utcnow()
    try:
        redemption = redeem(perk, standing_of(member, now=now), now=now)
    except PerkRefused as refusal:
        db.session.rollback()
        raise Problem(409, str(refusal)) from refusal
    audit.record(
        "perk.redeemed_for", perk, actor=g.api_token.actor, data={"member": member.id}, now=now
    )
    db.session.flush()
    return redemption


@blp.route("/members/<id:member_id>/coupons", methods=["POST"])
@scope("perks:write")
@blp.arguments(CouponArgs)
@write
@blp.response(201, CouponIssued)
@links(201, Coupons=_of_member("member_coupons", "/member_id"))
@documented(404)
def issue_coupon(args: dict, member_id: int):
    """Issue a coupon to a member."""
    member = _member(member_id)
    code = args["code"].strip().upper()
    coupon = db.session.scalar(
        sa.select(Coupon).where(Coupon.community_id == member.community_id, Coupon.code == code)
    )
    if coupon is None:
        raise Problem(404, _("No such coupon"))
    issued = grant_coupon(coupon, member, source=g.api_token.actor, now=utcnow())
    return {"code": coupon.code, "member_id": member.id, "issued": issued}


@blp.route("/members/<id:member_id>/coupons")
@scope("perks:read")
@blp.response(200, MemberCouponSchema(many=True))
@documented(404)
def member_coupons(member_id: int):
    """The coupons issued to a member, oldest first."""
    member = _member(member_id)
    return db.session.scalars(
        sa.select(CouponGrant)
        .where(CouponGrant.member_id == member.id)
        .options(joinedload(CouponGrant.coupon))
        .order_by(CouponGrant.id)
    ).all()


@blp.route("/events")
@scope("events:read")
@blp.arguments(PageArgs, location="query", as_kwargs=True, unknown=ma.RAISE)
@blp.response(200, EventPage)
@links(200, NextPage=_next_page("list_events"))
@documented()
def list_events(after: int, limit: int):
    """What happened, in order, after the cursor (each event's ``cursor``)."""
    rows = db.session.scalars(
        sa.select(Event)
        .where(Event.community_id == g.api_token.community_id, Event.id > after)
        .order_by(Event.id)
        .limit(limit + 1)
    ).all()
    return _page(rows, limit)


#: Whatever under the prefix no view takes (``/members/abc`` included) is a problem too,
#: not the HTML error page.
unknown = FlaskBlueprint("api_v1_unknown", __name__, url_prefix=PREFIX)


class AnyPath(PathConverter):
    """Any rest of a path, new lines included (Werkzeug's ``path`` stops at them)."""

    regex = r"[\s\S]+"
    part_isolating = False  # Werkzeug guesses from the pattern, which has no "/"


@unknown.route("/<anypath:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def no_such_resource(rest: str):
    return problem_response(404, _("No such resource"))


def init_api(app: Flask) -> None:
    """Serve the API and its document (called by ``create_app``)."""
    app.config.setdefault("API_TITLE", "Qunmen API")
    app.config.setdefault("API_VERSION", "1")
    app.config.setdefault("OPENAPI_VERSION", "3.1.0")
    app.config.setdefault("OPENAPI_URL_PREFIX", PREFIX)
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    app.url_map.converters["id"] = IdConverter
    app.url_map.converters["anypath"] = AnyPath
    api = QunmenApi(
        app,
        spec_kwargs={
            "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
            "security": [{"token": []}],
        },
    )
    api.register_converter(IdConverter, integerconverter2paramschema)
    # Tokens, not cookies: no cross-site request can carry one.
    csrf.exempt(blp)
    csrf.exempt(unknown)
    api.register_blueprint(blp)
    for blueprint in (blp, unknown):
        answer_in_accepted_language(blueprint.name, API_LOCALE)
    describe_machine_endpoints(api.spec, app.url_map)
    app.register_blueprint(unknown)
    app.extensions["qunmen.api"] = api
    app.register_blueprint(document)
