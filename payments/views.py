"""Payer- and provider-facing endpoints: sending a payer to their provider, the webhook
inbox's door, the fake provider's cashier and the WeChat Pay pages (QR code, JSAPI)."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from datetime import datetime

import qrcode
import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from qrcode.image.svg import SvgPathImage
from sqlalchemy.exc import OperationalError
from wtforms import SubmitField

from core.clock import utcnow
from core.db import db, end_transaction_keeping_objects, read_first, take_write_lock
from core.forms import Form
from core.i18n import belongs_to_community
from core.limits import client_network
from core.security import csrf, new_token, sign_for_this_browser, unsign_for_this_browser
from payments import inbox
from payments.discounts import DiscountRefused, Purchase, claim_code_try, discount_order
from payments.models import Order, Payment, PaymentStatus
from payments.providers import EventKind, Payer, PaymentProvider, ProviderError, get_provider
from payments.providers.fake import FakeProvider
from payments.providers.wechatpay import WeChatPayBase
from payments.services import PaymentError, provider_of, register_with_provider, start_payment

log = logging.getLogger(__name__)

#: Real notifications are a few KB (WeChat Pay's XML, Stripe's events); anything larger
#: is refused unread.
MAX_NOTIFICATION_BYTES = 64 * 1024
#: Where the payer's WeChat openid is kept between the OAuth redirect and the payment.
OPENID_SESSION_KEY = "wechat_openid"


def claim_discount_code_try(code: str | None) -> None:
    """Called by a page that took a discount code, before it makes anything (an order, an
    application): the try is counted against this client's and the install's limits
    (:func:`~payments.discounts.claim_code_try`) and committed at once, so parallel tries
    queue on the counters and see each other, and a refused try still counts. Raises
    :class:`DiscountRefused` over a limit: then nothing was made and the code must not be
    looked up. Does nothing when no code was typed."""
    if not code:
        return
    try:
        claim_code_try(client_network(), now=utcnow())
    finally:
        db.session.commit()


def apply_discount_code(
    order: Order,
    code: str,
    *,
    product: str,
    buyer: str,
    actor: str,
    now: datetime | None = None,
) -> None:
    """Apply the code a payer typed on a page to ``order`` before it is paid (see
    :func:`~payments.discounts.discount_order`; ``product`` and ``buyer`` as in
    :class:`~payments.discounts.Purchase`); its try was claimed with
    :func:`claim_discount_code_try`. Raises :class:`DiscountRefused`: answer it with
    :func:`refuse_discount_code`."""
    purchase = Purchase(product=product, buyer=buyer)
    discount_order(order, code, purchase, actor=actor, now=now or utcnow())


def refuse_discount_code(refusal: DiscountRefused) -> str:
    """After :class:`DiscountRefused`: what the request made is rolled back (nothing was
    made when a limit was reached), and the message to show is returned."""
    db.session.rollback()
    return str(refusal)


def current_payer() -> Payer:
    return Payer(
        user_agent=request.user_agent.string or "",
        client_ip=request.remote_addr or "127.0.0.1",
        wechat_openid=session.get(OPENID_SESSION_KEY),
    )


def openid_key(provider: WeChatPayBase) -> str:
    """Where this browser's openid under ``provider``'s official account is kept: the
    install's account's under :data:`OPENID_SESSION_KEY` (which the join and the member
    login read as proof of who the payer is), a community's own account's apart (an openid
    is an id under one official account only)."""
    install = get_provider(WeChatPayBase.name)
    if install is None or install.app_id == provider.app_id:
        return OPENID_SESSION_KEY
    return f"{OPENID_SESSION_KEY}:{provider.app_id}"


def _payer_of(provider: PaymentProvider | None) -> Payer:
    """The payer as ``provider`` knows them: WeChat Pay, with their openid under its own
    official account, when this browser has one."""
    payer = current_payer()
    if isinstance(provider, WeChatPayBase):
        payer = replace(payer, wechat_openid=session.get(openid_key(provider)))
    return payer


def send_to_provider(
    order: Order, provider_name: str | None, *, return_url: str, cancel_url: str, actor: str
) -> Response:
    """Send the payer on to pay ``order``: to the provider's page, through WeChat's OAuth
    first when a JSAPI payment needs their openid. Commits. On a refusal the payer goes
    back to ``return_url`` with a message; nothing is charged."""
    try:
        payer = _payer_of(get_provider(provider_name, order.community_id))
    except ProviderError:
        payer = current_payer()  # start_payment refuses it, with the message for the payer
    try:
        payment = start_payment(
            order,
            provider_name or "",
            payer=payer,
            return_url=return_url,
            cancel_url=cancel_url,
            actor=actor,
        )
    except PaymentError as refusal:
        db.session.commit()  # an order found expired is recorded as such
        flash(str(refusal), "error")
        return redirect(return_url)
    if payment.method == "jsapi" and not payer.wechat_openid:
        db.session.commit()
        provider: WeChatPayBase = provider_of(payment)
        oauth = provider.oauth(
            url_for("wechatpay.oauth_return", _external=True),
            sign_for_this_browser("wechat-oauth", payment.public_id),
        )
        return redirect(oauth.authorize_url)
    try:
        return redirect(register_with_provider(payment, payer, actor=actor))
    except ProviderError:
        flash(
            _("The payment service is unavailable; please try again or pick another way to pay"),
            "error",
        )
        return redirect(return_url)


webhooks = Blueprint("webhooks", __name__)


_COMMUNITIES = sa.table("communities", sa.column("id"), sa.column("slug"))


#: The most digits a community id in a webhook URL has: more cannot be an id (and would
#: overflow the database's integer), so they are read as a slug only.
_MAX_ID_DIGITS = 9


def _community_named(name: str) -> int | None:
    """The id of the community a webhook URL names by its id or its slug, or None."""
    where = _COMMUNITIES.c.slug == name
    if name.isascii() and name.isdigit() and len(name) <= _MAX_ID_DIGITS:
        where = sa.or_(_COMMUNITIES.c.id == int(name), where)
    return db.session.scalar(sa.select(_COMMUNITIES.c.id).where(where).limit(1))


@webhooks.post("/webhooks/<provider_name>", defaults={"community": None})
@webhooks.post("/webhooks/<provider_name>/<community>")
@csrf.exempt
def receive(provider_name: str, community: str | None):
    """A provider's notification: verified, then applied (see :mod:`payments.inbox`). The
    URL names the community (by id or slug) whose keys verify it, or none for the
    install's keys. A body over :data:`MAX_NOTIFICATION_BYTES` is refused after reading
    at most that much. Reads first: a delivery of an event applied before writes nothing
    (on SQLite it does not wait for the write lock)."""
    read_first()
    community_id = None
    if community is not None:
        community_id = _community_named(community)
        if community_id is None:
            abort(404)
    try:
        provider = get_provider(provider_name, community_id)
    except ProviderError:
        provider = get_provider(provider_name)  # to answer; the inbox records why
    if provider is None:
        abort(404)
    headers, client = dict(request.headers), client_network()
    too_large = f"body over {MAX_NOTIFICATION_BYTES // 1024} KB"
    where = {"client": client, "community_id": community_id}
    try:
        if (request.content_length or 0) > MAX_NOTIFICATION_BYTES:
            result = inbox.refuse(provider_name, headers, too_large, **where)
            return provider.acknowledge(False, result.message, 413)
        body = request.stream.read(MAX_NOTIFICATION_BYTES + 1)
        if len(body) > MAX_NOTIFICATION_BYTES:
            result = inbox.refuse(provider_name, headers, too_large, body=body, **where)
            return provider.acknowledge(False, result.message, 413)
        result = inbox.receive(provider_name, body, headers, **where)
    except OperationalError:
        # The database is unreachable: nothing was stored; the provider must deliver again.
        log.exception("webhook from %s not stored: database unreachable", provider_name)
        db.session.rollback()
        return provider.acknowledge(False, "database unavailable", 503)
    return provider.acknowledge(result.accepted, result.message, result.http_status)


fake_cashier = Blueprint("fake_cashier", __name__)


class CashierForm(Form):
    pay = SubmitField(_l("Confirm the payment"))
    fail = SubmitField(_l("Simulate a failure"))
    cancel = SubmitField(_l("Cancel the payment"))


#: Built once: every step of a payer at a provider's page runs it.
_PAYMENT_BY_PUBLIC_ID = sa.select(Payment).where(Payment.public_id == sa.bindparam("public_id"))


def _payment(public_id: str, provider_name: str) -> Payment:
    payment = db.session.scalar(_PAYMENT_BY_PUBLIC_ID, {"public_id": public_id})
    if payment is None or payment.provider != provider_name:
        abort(404)
    if provider_of(payment) is None:
        abort(404)
    return payment


@fake_cashier.route("/fake-pay/<payment_public_id>", methods=["GET", "POST"])
def cashier(payment_public_id: str):
    """The fake provider's payment page. Paying sends a signed notification to the inbox,
    as the provider's server would, then returns the payer to us."""
    payment = _payment(payment_public_id, FakeProvider.name)
    belongs_to_community(payment.order.community_id)
    form = CashierForm()
    if payment.status is PaymentStatus.CREATED and form.validate_on_submit():
        kind = (
            EventKind.PAYMENT_SUCCEEDED
            if form.pay.data
            else EventKind.PAYMENT_FAILED
            if form.fail.data
            else EventKind.PAYMENT_CANCELLED
        )
        body, headers = get_provider(FakeProvider.name).build_notification(
            payment,
            kind,
            event_id=f"evt_{new_token(12)}",
            transaction_id=f"fake_{new_token(12)}",
            now=utcnow(),
        )
        result = inbox.receive(FakeProvider.name, body, headers)
        if result.http_status >= 500:
            flash(_("Could not notify the shop, please try again"), "error")
        else:
            cancelled = kind is EventKind.PAYMENT_CANCELLED
            return redirect(payment.cancel_url if cancelled else payment.return_url)
    return render_template("payments/fake_cashier.html", payment=payment, form=form)


wechatpay = Blueprint("wechatpay", __name__, url_prefix="/pay/wechat")


@wechatpay.get("/oauth-return")
def oauth_return():
    """WeChat sends the payer back here with a code for their openid; the JSAPI payment
    they started is registered and they go on to pay."""
    public_id = unsign_for_this_browser("wechat-oauth", request.args.get("state", ""))
    code = request.args.get("code", "")
    if not isinstance(public_id, str) or not code:
        abort(400)
    payment = _payment(public_id, WeChatPayBase.name)
    provider: WeChatPayBase = provider_of(payment)
    end_transaction_keeping_objects()
    try:
        openid = provider.openid_from_code(url_for(".oauth_return", _external=True), code)
    except ProviderError:
        flash(_("WeChat authorisation failed, please try again"), "error")
        return redirect(payment.return_url)
    session[openid_key(provider)] = openid
    take_write_lock()  # a GET that registers the payment
    try:
        return redirect(register_with_provider(payment, _payer_of(provider), actor="prospect"))
    except ProviderError:
        flash(_("WeChat Pay is unavailable, try again later"), "error")
        return redirect(payment.return_url)


@wechatpay.get("/<payment_public_id>")
def pay(payment_public_id: str):
    """The payer's next step for a Native (QR code) or JSAPI payment."""
    payment = _payment(payment_public_id, WeChatPayBase.name)
    if payment.status is not PaymentStatus.CREATED:
        return redirect(payment.return_url)
    return render_template("payments/wechatpay.html", payment=payment)


@wechatpay.get("/<payment_public_id>/qr.svg")
def qr(payment_public_id: str):
    """The Native payment's QR code, drawn here: the code URL never leaves for a third
    party's QR service."""
    payment = _payment(payment_public_id, WeChatPayBase.name)
    code_url = payment.provider_data.get("code_url")
    if not code_url or payment.status is not PaymentStatus.CREATED:
        abort(404)
    buffer = io.BytesIO()
    qrcode.make(code_url, image_factory=SvgPathImage, box_size=10, border=2).save(buffer)
    response = Response(buffer.getvalue(), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "private, no-store"
    return response
