"""Admin pages for money: orders, payment attempts, refunds, the webhook inbox,
reconciliation with the providers' statements, and communities' own payment accounts."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from flask_login import current_user, login_required
from flask_wtf.file import FileAllowed, FileField, FileSize
from sqlalchemy.orm import joinedload, selectinload
from wtforms import (
    BooleanField,
    HiddenField,
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    Optional,
    Regexp,
    ValidationError,
)

from core import audit
from core.auth import in_visible_communities, load_for, requires
from core.clock import utcnow
from core.db import db, row_id
from core.forms import DateField, Form, MoneyField, UnreadableFile, uploaded_text
from core.labels import code_reader
from core.secrets import SecretsUnavailable
from payments.accounts import FIELDS, account_of, remove_account, save_account
from payments.exports import major
from payments.models import (
    FLAG_KIND_LABELS,
    PROVIDER_LABELS,
    Order,
    OrderFlag,
    Payment,
    PaymentAccount,
    Reconciliation,
    RefundStatus,
    WebhookEvent,
)
from payments.providers import (
    ProviderError,
    build_community_provider,
    get_provider,
    notify_url,
)
from payments.reconciliation import READERS, StatementError, reconcile
from payments.services import (
    PaymentError,
    request_refund,
    resolve_flag,
    send_refund,
    surplus_payments,
)

bp = Blueprint("payments_admin", __name__, url_prefix="/admin/payments")

PAGE_SIZE = 50


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


def _page() -> int:
    return max(request.args.get("page", 1, type=row_id), 1)


def _in_visible_orders(order_id, permission: str = "payments.view") -> sa.ColumnElement[bool]:
    """Rows whose ``order_id`` is an order of a community the person may see."""
    return order_id.in_(
        sa.select(Order.id).where(in_visible_communities(Order.community_id, permission))
    )


def visible_webhook_events() -> sa.ColumnElement[bool]:
    """The provider notifications the logged-in person may see: those about a payment of
    a community they see payments of. Notifications matched to no payment (refused,
    unknown) belong to the install: its owners see them."""
    about_payments = WebhookEvent.payment_id.in_(
        sa.select(Payment.id).where(_in_visible_orders(Payment.order_id))
    )
    if current_user.install_owner:
        return sa.or_(about_payments, WebhookEvent.payment_id.is_(None))
    return about_payments


#: The communities' time zones, read by table name: payments imports nothing from
#: membership, and an order only knows its community's id.
_communities = sa.table("communities", sa.column("id"), sa.column("time_zone"))
#: Their names and slugs, for the reconcile and payment accounts pages.
_COMMUNITIES = sa.table("communities", sa.column("id"), sa.column("name"), sa.column("slug"))


def _zones(community_ids: set[int]) -> dict[int, str]:
    """The time zone of each of ``community_ids``: the pages of money show each time in
    the zone of the community it belongs to."""
    rows = db.session.execute(
        sa.select(_communities.c.id, _communities.c.time_zone).where(
            _communities.c.id.in_(community_ids)
        )
    )
    return dict(rows.all())


def _default_zone() -> str:
    """The install's zone, for times that belong to no community (named on the page)."""
    return current_app.config["BABEL_DEFAULT_TIMEZONE"]


@bp.app_template_filter("provider")
def provider_label(name: str) -> str:
    """A payment provider's name as the reader calls it."""
    label = PROVIDER_LABELS.get(name)
    return str(label) if label is not None else name


def _webhook_names(providers: list[str]) -> dict[str, str]:
    """The audit log's names for ``webhook:<provider>`` actors: the provider."""
    return {provider: provider_label(provider) for provider in providers}


audit.register_actor_names("webhook", _webhook_names)


@bp.get("/orders")
@requires("payments.view")
def orders():
    rows = db.paginate(
        sa.select(Order)
        .where(in_visible_communities(Order.community_id, "payments.view"))
        .order_by(Order.id.desc()),
        page=_page(),
        per_page=PAGE_SIZE,
    )
    zones = _zones({order.community_id for order in rows.items})
    return render_template("admin/orders.html", page=rows, zones=zones)


@bp.get("/payments")
@requires("payments.view")
def payments():
    rows = db.paginate(
        sa.select(Payment)
        .where(_in_visible_orders(Payment.order_id))
        .order_by(Payment.id.desc())
        .options(
            joinedload(Payment.order),
            selectinload(Payment.refunds),
            selectinload(Payment.disputes),
        ),
        page=_page(),
        per_page=PAGE_SIZE,
    )
    zones = _zones({payment.order.community_id for payment in rows.items})
    return render_template("admin/payments.html", page=rows, zones=zones)


@bp.get("/inbox")
@requires("payments.view")
def inbox():
    rows = db.paginate(
        sa.select(WebhookEvent).where(visible_webhook_events()).order_by(WebhookEvent.id.desc()),
        page=_page(),
        per_page=PAGE_SIZE,
    )
    return render_template("admin/inbox.html", page=rows, zone=_default_zone())


class RefundForm(Form):
    amount = MoneyField(_l("Amount"), validators=[DataRequired(_l("Required"))])
    reason = StringField(_l("Reason"), validators=[DataRequired(_l("Required")), Length(max=200)])
    revoke_access = BooleanField(_l("Also end access (for a partial refund)"))


@bp.route("/payments/<int:payment_id>/refund", methods=["GET", "POST"])
@requires("payments.refund")
def refund(payment_id: int):
    """Refund some or all of a confirmed payment through its provider. A full refund
    always ends the access it paid for; a partial one only when asked."""
    payment = load_for(Payment, payment_id, "payments.refund")
    form = RefundForm()
    form.amount.currency = payment.currency
    if request.method == "GET":
        form.amount.data = payment.kept().major_str()
    if payment.refundable and form.validate_on_submit():
        try:
            refund = request_refund(
                payment,
                form.amount.money,
                reason=form.reason.data,
                revoke_access=form.revoke_access.data,
                actor=current_user.actor,
            )
        except PaymentError as refusal:
            db.session.rollback()
            form.amount.errors.append(str(refusal))
        else:
            refund = send_refund(refund, actor=current_user.actor)
            if refund.status is RefundStatus.FAILED:
                flash(_("Refund failed: %(reason)s", reason=refund.failure_reason), "error")
            elif refund.status is RefundStatus.SUCCEEDED:
                flash(_("%(amount)s refunded", amount=refund.money), "ok")
            else:
                flash(
                    _("Refund of %(amount)s sent, awaiting the provider", amount=refund.money),
                    "ok",
                )
            return redirect(url_for(".refund", payment_id=payment.id))
    return render_template(
        "admin/refund.html",
        zone=_zones({payment.order.community_id})[payment.order.community_id],
        actors=audit.actor_names(refund.requested_by for refund in payment.refunds),
        payment=payment,
        form=form,
        surplus=payment in surplus_payments(payment.order),
        flags=db.session.scalars(
            sa.select(OrderFlag).where(
                OrderFlag.order_id == payment.order_id, OrderFlag.resolved_at.is_(None)
            )
        ).all(),
    )


class ResolveForm(Form):
    flag = HiddenField(validators=[DataRequired(), Regexp(r"^\d{1,18}$")])


@bp.route("/attention", methods=["GET", "POST"])
@requires("payments.refund")
def attention():
    """Orders whose money needs a person: paid twice, bought twice, a second transaction,
    a renewal of an ended membership, a coupon paid for past its limit. Each links to the
    payment to refund; marking one dealt with keeps it in the audit log."""
    form = ResolveForm()
    if form.validate_on_submit():
        flag = load_for(OrderFlag, int(form.flag.data), "payments.refund")
        if resolve_flag(flag, actor=current_user.actor):
            flash(_("Marked as dealt with"), "ok")
        db.session.commit()
        return redirect(url_for(".attention"))
    rows = db.paginate(
        sa.select(OrderFlag)
        .where(
            OrderFlag.resolved_at.is_(None),
            _in_visible_orders(OrderFlag.order_id, "payments.refund"),
        )
        .order_by(OrderFlag.id.desc())
        .options(joinedload(OrderFlag.order), joinedload(OrderFlag.payment)),
        page=_page(),
        per_page=PAGE_SIZE,
    )
    zones = _zones({flag.order.community_id for flag in rows.items})
    return render_template("admin/attention.html", page=rows, form=form, zones=zones)


#: The choice of the install's own accounts on the reconcile page.
INSTALL_ACCOUNT = ""


class StatementForm(Form):
    """A statement to reconcile: whose account (the install's, or a community's own), which
    provider, and a file, or the day of WeChat Pay's bill to download with that account's
    keys."""

    community = SelectField(_l("Whose account"), choices=[], default=INSTALL_ACCOUNT)
    provider = RadioField(
        _l("Provider"),
        choices=[
            SelectChoice("wechatpay", _l("WeChat Pay daily bill")),
            SelectChoice("stripe", _l("Stripe itemized balance report")),
        ],
        default="wechatpay",
        validators=[InputRequired(_l("Required"))],
    )
    statement = FileField(
        _l("Statement"),
        validators=[
            FileAllowed(["csv", "txt"], _l("CSV or TXT only")),
            FileSize(20 * 1024 * 1024, message=_l("Too large")),
        ],
    )
    day = DateField(_l("Or download WeChat Pay's bill of the day"), validators=[Optional()])

    def validate_day(self, field) -> None:
        """A file, or a day of WeChat Pay's bill: one of the two."""
        if (field.data is None) == (not self.statement.data):
            raise ValidationError(_("Choose a file, or a day of WeChat Pay's bill"))
        if field.data is not None and self.provider.data != "wechatpay":
            raise ValidationError(_("Only WeChat Pay's bill can be downloaded"))


def _reconcilable_accounts() -> list[SelectChoice]:
    """Whose statements the logged-in person may reconcile: the install's accounts when
    they may export every community's revenue (a statement of the install's merchant
    covers every community without its own), and the own accounts of the communities
    where they may export revenue (owners and finance)."""
    choices = []
    if current_user.can_everywhere("finance.export"):
        choices.append(SelectChoice(INSTALL_ACCOUNT, _("The install's accounts")))
    allowed = current_user.community_ids("finance.export")
    owning = sa.select(PaymentAccount.community_id)
    if allowed is not None:
        owning = owning.where(PaymentAccount.community_id.in_(sorted(allowed)))
    rows = db.session.execute(
        sa.select(_COMMUNITIES.c.id, _COMMUNITIES.c.name)
        .where(_COMMUNITIES.c.id.in_(owning))
        .order_by(_COMMUNITIES.c.id)
    )
    choices += [
        SelectChoice(str(row.id), _("%(community)s's own account", community=row.name))
        for row in rows
    ]
    return choices


def _statement_text(form: StatementForm, community_id: int | None) -> tuple[str, str] | None:
    """The statement the form names, and its file's name: the uploaded file, or WeChat
    Pay's bill of the day downloaded with the keys of ``community_id``'s own account (the
    install's when None). None, with the form's error set, when it cannot be had."""
    if form.day.data is None:
        upload = form.statement.data
        try:
            return uploaded_text(upload.read()), upload.filename or ""
        except UnreadableFile as unreadable:
            form.statement.errors.append(str(unreadable))
            return None
    try:
        wechat = get_provider("wechatpay", community_id)
        if wechat is None:
            raise ProviderError("WeChat Pay is not configured")
        return wechat.download_bill(form.day.data), f"wechatpay-{form.day.data:%Y%m%d}.txt"
    except ProviderError as error:
        form.day.errors.append(_("The bill could not be downloaded: %(error)s", error=str(error)))
        return None


def _visible_reconciliations() -> sa.ColumnElement[bool]:
    """The earlier imports the logged-in person may see: every one for those who reconcile
    the install's accounts; else those of the own accounts of their communities (by the
    community each import's audit entry is filed under)."""
    if current_user.can_everywhere("finance.export"):
        return sa.true()
    return Reconciliation.id.in_(
        sa.select(audit.AuditEntry.target_id).where(
            audit.AuditEntry.action == "reconciliation.imported",
            audit.AuditEntry.target_type == Reconciliation.__tablename__,
            audit.AuditEntry.community_id.in_(
                sorted(current_user.community_ids("finance.export") or ())
            ),
        )
    )


@bp.route("/reconcile", methods=["GET", "POST"])
@requires("finance.export")
def reconcile_page():
    """Reconcile a provider's statement: what is missing on either side or differs, a line
    per day, and the fees recorded. A statement of the install's accounts covers every
    community without its own there, so only staff who may export every community's
    revenue reconcile it; a community's own account's statement is reconciled by those who
    may export that community's revenue, against its own ledger, its bill downloaded with
    its own keys. Staff with neither get a 403."""
    form = StatementForm()
    form.community.choices = _reconcilable_accounts()
    if not form.community.choices:
        abort(403)
    report = None
    if form.validate_on_submit():
        community_id = int(form.community.data) if form.community.data else None
        statement = _statement_text(form, community_id)
        if statement is not None:
            try:
                lines = READERS[form.provider.data](statement[0])
            except StatementError as error:
                form.statement.errors.append(str(error))
            else:
                report = reconcile(
                    form.provider.data,
                    lines,
                    filename=statement[1],
                    actor=current_user.actor,
                    now=utcnow(),
                    community_id=community_id,
                )
                db.session.commit()
    history = db.session.scalars(
        sa.select(Reconciliation)
        .where(_visible_reconciliations())
        .order_by(Reconciliation.id.desc())
        .limit(20)
    ).all()
    return render_template(
        "admin/reconcile.html",
        form=form,
        report=report,
        history=history,
        major=major,
        zone=_default_zone(),
        actors=audit.actor_names(row.imported_by for row in history),
    ), 422 if form.errors else 200


# Communities' own payment accounts ------------------------------------------------------


def _account_form(provider: str) -> Form:
    """The form for a community's account at ``provider``: a field per setting of
    :data:`~payments.accounts.FIELDS`, and for each secret a box to clear it. Secret
    fields are never filled in from what was saved."""
    fields: dict[str, Any] = {}
    for setting in FIELDS[provider]:
        limit = Length(max=8000 if setting.pem else 300)
        if setting.secret:
            kind = TextAreaField if setting.pem else PasswordField
            fields[setting.name] = kind(setting.label, validators=[Optional(), limit])
            fields[f"clear_{setting.name}"] = BooleanField(_l("Clear it"))
        else:
            kind = TextAreaField if setting.pem else StringField
            fields[setting.name] = kind(setting.label, validators=[Optional(), limit])
    fields["save"] = SubmitField(_l("Save"))
    fields["remove"] = SubmitField(_l("Remove this account"))
    return type(f"{provider.title()}AccountForm", (Form,), fields)(prefix=provider)


def _community_row(community_id: int) -> sa.Row:
    """The community whose accounts the page shows: a 404 when there is none or the
    person may not manage that community's team (its owners)."""
    row = db.session.execute(
        sa.select(_COMMUNITIES).where(_COMMUNITIES.c.id == community_id)
    ).first()
    if row is None or not current_user.can("staff.manage", community_id):
        abort(404)
    return row


def _render_accounts(community: sa.Row, forms: dict[str, Form], status: int = 200):
    """The page, with every secret field emptied: a secret is never sent back."""
    for provider, form in forms.items():
        for setting in FIELDS[provider]:
            if setting.secret:
                form[setting.name].data = ""
    return render_template(
        "admin/payment_accounts.html",
        community=community,
        forms=forms,
        fields=FIELDS,
        accounts={p: account_of(community.id, p) for p in FIELDS},
        webhook_urls={p: notify_url(p, community.id) for p in FIELDS},
    ), status


@bp.route("/accounts/<int:community_id>", methods=["GET", "POST"])
@requires("staff.manage")
def accounts(community_id: int):
    """A community's own WeChat Pay merchant and Stripe account: what is set (secrets
    only as set, with their last characters), the webhook address to give the provider,
    and a form for each. Posting one form saves, replaces or clears that account, or
    removes it; the settings must make a working provider, or nothing is saved."""
    community = _community_row(community_id)
    if request.method == "GET":
        return _render_accounts(community, _saved_forms(community_id))
    # Which form was sent: its buttons are named after its provider.
    provider = next((p for p in FIELDS if {f"{p}-save", f"{p}-remove"} & set(request.form)), None)
    if provider is None:
        abort(400)
    form = _account_form(provider)
    if not form.validate_on_submit():
        return _render_accounts(community, {**_saved_forms(community_id), provider: form}, 422)
    actor = current_user.actor
    if form.remove.data:
        account = account_of(community_id, provider)
        if account is not None:
            remove_account(account, actor=actor)
            db.session.commit()
        flash(_("The community now uses the install's keys for this provider."), "ok")
        return redirect(url_for(".accounts", community_id=community_id))
    values = {s.name: form[s.name].data or "" for s in FIELDS[provider]}
    try:
        account = save_account(
            community_id,
            provider,
            plain={s.name: values[s.name] for s in FIELDS[provider] if not s.secret},
            secrets={s.name: values[s.name] for s in FIELDS[provider] if s.secret},
            cleared={s.name for s in FIELDS[provider] if s.secret and form[f"clear_{s.name}"].data},
            actor=actor,
        )
        build_community_provider(account)
    except SecretsUnavailable:
        db.session.rollback()
        form.save.errors = [_("Secrets cannot be stored: the install has no SECRETS_KEYS.")]
        return _render_accounts(community, {**_saved_forms(community_id), provider: form}, 422)
    except ProviderError as error:
        db.session.rollback()
        form.save.errors = [
            _("These settings do not make a working account: %(error)s", error=str(error))
        ]
        return _render_accounts(community, {**_saved_forms(community_id), provider: form}, 422)
    db.session.commit()
    flash(_("Saved. Secrets are not shown again."), "ok")
    return redirect(url_for(".accounts", community_id=community_id))


def _saved_forms(community_id: int) -> dict[str, Form]:
    """A form per provider, filled in with the community's saved plain settings."""
    forms = {}
    for provider in FIELDS:
        form = _account_form(provider)
        account = account_of(community_id, provider)
        for name, value in (account.settings if account else {}).items():
            form[name].data = value
        forms[provider] = form
    return forms


#: What this package's audit actions and tables are called on the audit log.
audit.register_labels(
    {
        "order.created": _l("Order created"),
        "order.expired": _l("Order expired"),
        "order.withdrawn": _l("Order replaced by a new one before it was paid"),
        "order.paid": _l("Order paid"),
        "order.paid_again": _l("Order paid again"),
        "order.refunded": _l("Order refunded"),
        "order.discounted": _l("Coupon applied to an order"),
        "order.flagged": _l("Order needs attention"),
        "order.flag_resolved": _l("Marked as dealt with"),
        "payment.started": _l("Payment started"),
        "payment.start_failed": _l("Payment could not start"),
        "payment.confirmed": _l("Payment confirmed"),
        "payment.failed": _l("Payment failed"),
        "payment.cancelled": _l("Payment cancelled"),
        "payment.expired": _l("Payment expired"),
        "payment.second_transaction": _l("Second transaction reported"),
        "refund.requested": _l("Refund requested"),
        "refund.succeeded": _l("Refunded"),
        "refund.failed": _l("Refund failed"),
        "dispute.open": _l("Payment disputed"),
        "dispute.won": _l("Dispute won"),
        "dispute.lost": _l("Dispute lost"),
        "reconciliation.imported": _l("Statement reconciled"),
        "payment_account.created": _l("Payment account added"),
        "payment_account.updated": _l("Payment account changed"),
        "payment_account.removed": _l("Payment account removed"),
        "payment_account.resealed": _l("Payment account secrets re-encrypted"),
    },
    {
        "orders": lazy_pgettext("object", "Order"),
        "payments": lazy_pgettext("object", "Payment"),
        "refunds": _l("Refund"),
        "disputes": _l("Dispute"),
        "order_flags": _l("Needs attention"),
        "reconciliations": _l("Reconciliation"),
        "payment_accounts": _l("Payment account"),
    },
)

#: What the details of this package's entries are called; providers, payment methods,
#: flags and the reasons access was withdrawn by their names.
audit.register_details(
    {
        "provider": _l("Provider"),
        "method": _l("Payment method"),
        "payment": lazy_pgettext("object", "Payment"),
        "order": lazy_pgettext("object", "Order"),
        "known": _l("Transaction on record"),
        "reported": _l("Transaction reported"),
        "flag": _l("Needs attention"),
        "changed": _l("Settings changed"),
        "secrets": _l("Secrets"),
        "lines": _l("Lines"),
        "problems": _l("Problems"),
        "revoke_access": _l("Access withdrawn"),
        "discount": _l("Discount"),
    },
    {
        "provider": code_reader(PROVIDER_LABELS),
        "method": code_reader(
            {
                "cashier": _l("Provider's cashier page"),
                "checkout": _l("Stripe Checkout"),
                "jsapi": _l("WeChat Pay inside WeChat"),
                "mweb": _l("WeChat Pay on a phone's browser"),
                "native": _l("WeChat Pay QR code"),
            }
        ),
        "kind": code_reader(FLAG_KIND_LABELS),
        "reason": code_reader(
            {
                "refunded": _l("Refunded"),
                "disputed": _l("Payment disputed"),
                "dispute_lost": _l("Dispute lost"),
                "price_changed": _l("Its price was no longer the current one"),
                "coupon": _l("A coupon was typed while a payment was open"),
            }
        ),
    },
)
