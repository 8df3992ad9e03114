"""Admin pages for perks, coupons (and campaigns of generated codes), courses, offers and
announcements: create, edit, deactivate, with redemption, use and sales counts; an
announcement's preview, sending and progress."""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from wtforms import SelectChoice, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from core import audit
from core.auth import load_for, requires
from core.clock import from_local, to_local, utcnow
from core.db import db, take_write_lock
from core.exporters import Exporter, csv_lines
from core.forms import field_labels
from core.labels import code_reader
from core.money import Money
from membership.forms import REQUIRED, strip_text
from membership.models import Community
from perks import announcements
from perks.coupons import generate_codes, issue_to_eligible, use_counts
from perks.courses import launch, offer_price
from perks.forms import CampaignForm, CouponForm, CourseForm, EligibilityForm, OfferForm, PerkForm
from perks.models import (
    PERK_KIND_LABELS,
    Announcement,
    Coupon,
    CouponUse,
    CouponUseStatus,
    Course,
    Enrolment,
    EnrolmentStatus,
    Offer,
    Perk,
    PerkKind,
)

bp = Blueprint("perks_admin", __name__, url_prefix="/admin")


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


ANY = SelectChoice(0, _l("— Any —"))


def _rule_choices(form, community: Community) -> None:
    form.tier_id.choices = [ANY, *(SelectChoice(t.id, t.name) for t in community.tiers)]


def _courses(community: Community) -> list[Course]:
    return db.session.scalars(
        sa.select(Course).where(Course.community_id == community.id).order_by(Course.id)
    ).all()


def _save(obj, values: dict[str, object], action: str) -> None:
    """Set ``values`` on ``obj`` and audit what changed."""
    audit.record(action, obj, actor=current_user.actor, data=audit.apply_changes(obj, values))


@bp.get("/communities/<int:community_id>/perks")
@requires("perks.manage")
def overview(community_id: int):
    community = load_for(Community, community_id, "perks.manage")
    coupons = db.session.scalars(
        sa.select(Coupon).where(Coupon.community_id == community.id, Coupon.campaign.is_(None))
    ).all()
    campaigns = db.session.execute(
        sa.select(
            Coupon.campaign,
            sa.func.count(sa.distinct(Coupon.id)),
            sa.func.count(CouponUse.id).filter(CouponUse.status == CouponUseStatus.CONSUMED),
        )
        .outerjoin(CouponUse, CouponUse.coupon_id == Coupon.id)
        .where(Coupon.community_id == community.id, Coupon.campaign.is_not(None))
        .group_by(Coupon.campaign)
        .order_by(Coupon.campaign)
    ).all()
    courses = _courses(community)
    sales = dict(
        db.session.execute(
            sa.select(Enrolment.course_id, sa.func.count())
            .where(
                Enrolment.course_id.in_([c.id for c in courses]),
                Enrolment.status == EnrolmentStatus.ACTIVE,
                Enrolment.order_id.is_not(None),
            )
            .group_by(Enrolment.course_id)
        ).all()
    )
    offer_sales = dict(
        db.session.execute(
            sa.select(Enrolment.offer_id, sa.func.count())
            .where(Enrolment.offer_id.is_not(None), Enrolment.status == EnrolmentStatus.ACTIVE)
            .group_by(Enrolment.offer_id)
        ).all()
    )
    return render_template(
        "admin/perks/overview.html",
        community=community,
        perks=db.session.scalars(
            sa.select(Perk).where(Perk.community_id == community.id).order_by(Perk.id)
        ).all(),
        coupons=coupons,
        uses=use_counts([c.id for c in coupons]),
        campaigns=campaigns,
        courses=courses,
        sales=sales,
        offers=db.session.scalars(
            sa.select(Offer).where(Offer.community_id == community.id).order_by(Offer.id)
        ).all(),
        offer_sales=offer_sales,
        offer_price=offer_price,
    )


@bp.route("/communities/<int:community_id>/perks/new", methods=["GET", "POST"])
@bp.route("/perks/<int:perk_id>/edit", methods=["GET", "POST"])
@requires("perks.manage")
def perk_form(community_id: int | None = None, perk_id: int | None = None):
    perk = load_for(Perk, perk_id, "perks.manage") if perk_id else None
    community = perk.community if perk else load_for(Community, community_id, "perks.manage")
    form = PerkForm(obj=perk)
    _rule_choices(form, community)
    coupons = db.session.scalars(
        sa.select(Coupon).where(Coupon.community_id == community.id, Coupon.campaign.is_(None))
    ).all()
    form.coupon_id.choices = [ANY, *(SelectChoice(c.id, c.code) for c in coupons)]
    form.course_id.choices = [ANY, *(SelectChoice(c.id, c.title) for c in _courses(community))]
    if form.validate_on_submit():
        if perk is None:
            perk = Perk(community=community, created_at=utcnow())
            db.session.add(perk)
        kind = PerkKind(form.kind.data)
        _save(
            perk,
            {
                **form.rule_values(),
                "name": form.name.data,
                "description": form.description.data or "",
                "kind": kind,
                "link_url": form.link_url.data or None,
                "coupon_id": form.coupon_id.data or None if kind is PerkKind.COUPON else None,
                "course_id": form.course_id.data or None if kind is PerkKind.COURSE else None,
                "stock": form.stock.data,
                "per_member_limit": form.per_member_limit.data,
            },
            "perk.saved",
        )
        if perk.stock is not None and perk.stock < perk.redeemed_count:
            db.session.rollback()
            form.stock.errors.append(_("Stock cannot be below the redemptions made"))
        else:
            db.session.commit()
            flash(_("Saved"), "ok")
            return redirect(url_for(".overview", community_id=community.id))
    return render_template(
        "admin/perks/form.html", form=form, community=community, title=_("Perk"), obj=perk
    )


def _coupon_values(form: CouponForm, community: Community) -> dict[str, object] | None:
    """The coupon's terms from the form, or None (with the errors on the form)."""
    amount_off = form.amount_off.money if form.kind.data == "amount" else None
    minimum = form.min_amount.money
    if minimum is None or (
        form.kind.data == "amount" and (amount_off is None or amount_off.is_zero)
    ):
        if amount_off is not None and amount_off.is_zero:
            form.amount_off.errors.append(_("Must be more than 0"))
        return None
    zone = community.time_zone
    return {
        **form.rule_values(),
        "description": form.description.data or "",
        "percent_off": form.percent_off.data if form.kind.data == "percent" else None,
        "amount_off": amount_off.amount if amount_off else None,
        "currency": community.currency,
        "min_amount": minimum.amount,
        "valid_from": from_local(form.valid_from.data, zone) if form.valid_from.data else None,
        "valid_until": from_local(form.valid_until.data, zone) if form.valid_until.data else None,
        "max_uses": form.max_uses.data,
        "max_uses_per_buyer": form.max_uses_per_buyer.data,
        "issued_only": form.issued_only.data,
        "tiers": [t for t in community.tiers if t.id in set(form.tiers.data or [])],
        "courses": [c for c in _courses(community) if c.id in set(form.courses.data or [])],
    }


def _coupon_choices(form: CouponForm, community: Community, coupon: Coupon | None) -> None:
    _rule_choices(form, community)
    form.tiers.choices = [SelectChoice(t.id, t.name) for t in community.tiers]
    form.courses.choices = [SelectChoice(c.id, c.title) for c in _courses(community)]
    form.amount_off.currency = form.min_amount.currency = community.currency
    if coupon is not None and request.method == "GET":
        form.kind.data = "percent" if coupon.percent_off is not None else "amount"
        if coupon.amount_off is not None:
            form.amount_off.data = Money(coupon.amount_off, coupon.currency).major_str()
        form.min_amount.data = Money(coupon.min_amount, coupon.currency).major_str()
        form.tiers.data = [t.id for t in coupon.tiers]
        form.courses.data = [c.id for c in coupon.courses]
        zone = community.time_zone
        form.valid_from.data = coupon.valid_from and to_local(coupon.valid_from, zone)
        form.valid_until.data = coupon.valid_until and to_local(coupon.valid_until, zone)


@bp.route("/communities/<int:community_id>/coupons/new", methods=["GET", "POST"])
@bp.route("/coupons/<int:coupon_id>/edit", methods=["GET", "POST"])
@requires("perks.manage")
def coupon_form(community_id: int | None = None, coupon_id: int | None = None):
    """A coupon's terms, and below them its uses."""
    coupon = load_for(Coupon, coupon_id, "perks.manage") if coupon_id else None
    community = coupon.community if coupon else load_for(Community, community_id, "perks.manage")
    form = CouponForm(obj=coupon)
    _coupon_choices(form, community, coupon)
    if form.validate_on_submit():
        code = form.code.data.upper()
        taken = db.session.scalar(
            sa.select(Coupon.id).where(
                Coupon.community_id == community.id,
                Coupon.code == code,
                Coupon.id != (coupon_id or 0),
            )
        )
        if taken:
            form.code.errors.append(_("Code already taken"))
        values = _coupon_values(form, community)
        if values is not None and not taken:
            if coupon is None:
                coupon = Coupon(community=community, created_at=utcnow())
                db.session.add(coupon)
            _save(coupon, {**values, "code": code}, "coupon.saved")
            db.session.commit()
            flash(_("Saved"), "ok")
            return redirect(url_for(".overview", community_id=community.id))
    uses = (
        db.session.scalars(
            sa.select(CouponUse).where(CouponUse.coupon_id == coupon.id).order_by(CouponUse.id)
        ).all()
        if coupon
        else []
    )
    return render_template(
        "admin/perks/form.html",
        form=form,
        community=community,
        title=_("Coupon"),
        obj=coupon,
        uses=uses,
    )


@bp.post("/coupons/<int:coupon_id>/issue")
@requires("perks.manage")
def issue_coupon(coupon_id: int):
    """Issue the coupon to every member its eligibility rule picks."""
    coupon = load_for(Coupon, coupon_id, "perks.manage")
    issued = issue_to_eligible(coupon, actor=current_user.actor, now=utcnow())
    db.session.commit()
    flash(_("Issued to %(count)s members", count=issued), "ok")
    return redirect(url_for(".overview", community_id=coupon.community_id))


@bp.route("/communities/<int:community_id>/campaigns/new", methods=["GET", "POST"])
@requires("perks.manage")
def campaign_form(community_id: int):
    """Generate N unique codes with the same terms."""
    community = load_for(Community, community_id, "perks.manage")
    form = CampaignForm()
    _coupon_choices(form, community, None)
    if form.validate_on_submit():
        taken = db.session.scalar(
            sa.select(Coupon.id).where(
                Coupon.community_id == community.id, Coupon.campaign == form.campaign.data
            )
        )
        if taken:
            form.campaign.errors.append(_("Campaign name already used"))
        values = _coupon_values(form, community)
        if values is not None and not taken:
            codes = generate_codes(
                Coupon(community_id=community.id, **values),
                form.count.data,
                prefix=form.prefix.data or "",
                campaign=form.campaign.data,
                actor=current_user.actor,
                now=utcnow(),
            )
            db.session.commit()
            flash(_("%(count)s codes made", count=len(codes)), "ok")
            return redirect(url_for(".overview", community_id=community.id))
    return render_template(
        "admin/perks/form.html", form=form, community=community, title=_("Campaign")
    )


class CampaignCodes(Exporter):
    """A campaign's codes with their terms and uses, to hand out."""

    def __init__(self, community: Community, campaign: str) -> None:
        # Plain values: rows are read while the response streams, after the commit, and
        # the words in the reader's language are chosen now, inside the request.
        self.community_id, self.zone, self.campaign = community.id, community.time_zone, campaign
        self.title = _("Codes")
        self.headers = (_("Coupon code"), _("Discount"), _("Valid until"), _("Used"), _("Active"))
        self.answers = {True: _("yes"), False: _("no")}

    def rows(self):
        consumed = sa.func.count(CouponUse.id).filter(CouponUse.status == CouponUseStatus.CONSUMED)
        query = (
            sa.select(Coupon, consumed)
            .outerjoin(CouponUse, CouponUse.coupon_id == Coupon.id)
            .where(Coupon.community_id == self.community_id, Coupon.campaign == self.campaign)
            .group_by(Coupon.id)
            .order_by(Coupon.id)
        )
        for coupon, used in db.session.execute(query):
            until = coupon.valid_until
            yield [
                coupon.code,
                coupon.describe(),
                to_local(until, self.zone).isoformat(" ") if until else "",
                used,
                self.answers[coupon.active],
            ]


@bp.get("/communities/<int:community_id>/campaigns/<campaign>.csv")
@requires("perks.manage")
def campaign_csv(community_id: int, campaign: str):
    take_write_lock()  # for its audit entry
    community = load_for(Community, community_id, "perks.manage")
    exporter = CampaignCodes(community, campaign)
    audit.record(
        "coupon.campaign_exported", community, actor=current_user.actor, data={"campaign": campaign}
    )
    db.session.commit()
    return Response(
        stream_with_context(csv_lines(exporter)),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="coupon-codes.csv"'},
    )


@bp.route("/communities/<int:community_id>/courses/new", methods=["GET", "POST"])
@bp.route("/courses/<int:course_id>/edit", methods=["GET", "POST"])
@requires("perks.manage")
def course_form(community_id: int | None = None, course_id: int | None = None):
    course = load_for(Course, course_id, "perks.manage") if course_id else None
    community = course.community if course else load_for(Community, community_id, "perks.manage")
    form = CourseForm(obj=course)
    _rule_choices(form, community)
    form.price.currency = community.currency
    if course is not None and request.method == "GET":
        form.price.data = course.price_money.major_str()
    if form.validate_on_submit():
        price = form.price.money
        taken = db.session.scalar(
            sa.select(Course.id).where(
                Course.community_id == community.id,
                Course.code == form.code.data,
                Course.id != (course_id or 0),
            )
        )
        if taken:
            form.code.errors.append(_("Code already taken"))
        if price is not None and price.is_zero:
            form.price.errors.append(_("Must be more than 0"))
        elif price is not None and not taken:
            if course is None:
                course = Course(community=community, created_at=utcnow())
                db.session.add(course)
            _save(
                course,
                {
                    **form.rule_values(),
                    "code": form.code.data,
                    "title": form.title.data,
                    "description": form.description.data or "",
                    "price": price.amount,
                    "currency": price.currency,
                    "access_url": form.access_url.data,
                },
                "course.saved",
            )
            db.session.commit()
            flash(_("Saved"), "ok")
            return redirect(url_for(".overview", community_id=community.id))
    return render_template(
        "admin/perks/form.html", form=form, community=community, title=_("Course"), obj=course
    )


@bp.post("/courses/<int:course_id>/launch")
@requires("perks.manage")
def launch_course(course_id: int):
    """Put the course on sale and queue a message to each eligible member (each once);
    the outbox's worker sends them, not this request."""
    course = load_for(Course, course_id, "perks.manage")
    told = launch(course, actor=current_user.actor, now=utcnow())
    db.session.commit()
    flash(_("On sale; %(count)s members will be told", count=told), "ok")
    return redirect(url_for(".overview", community_id=course.community_id))


@bp.route("/communities/<int:community_id>/offers/new", methods=["GET", "POST"])
@bp.route("/offers/<int:offer_id>/edit", methods=["GET", "POST"])
@requires("perks.manage")
def offer_form(community_id: int | None = None, offer_id: int | None = None):
    offer = load_for(Offer, offer_id, "perks.manage") if offer_id else None
    community = (
        load_for(Community, offer.community_id, "perks.manage")
        if offer
        else load_for(Community, community_id, "perks.manage")
    )
    form = OfferForm(obj=offer)
    _rule_choices(form, community)
    form.course_id.choices = [SelectChoice(c.id, c.title) for c in _courses(community)]
    if offer is not None and request.method == "GET" and offer.valid_until:
        form.valid_until.data = to_local(offer.valid_until, community.time_zone)
    if form.validate_on_submit():
        if offer is None:
            offer = Offer(community_id=community.id, created_at=utcnow())
            db.session.add(offer)
        until = form.valid_until.data
        _save(
            offer,
            {
                **form.rule_values(),
                "name": form.name.data,
                "course_id": form.course_id.data,
                "percent_off": form.percent_off.data,
                "valid_until": from_local(until, community.time_zone) if until else None,
            },
            "offer.saved",
        )
        db.session.commit()
        flash(_("Saved"), "ok")
        return redirect(url_for(".overview", community_id=community.id))
    return render_template(
        "admin/perks/form.html", form=form, community=community, title=_("Offer"), obj=offer
    )


class AnnouncementForm(EligibilityForm):
    """An announcement and the rule that picks its recipients."""

    active = None
    title = StringField(
        _l("Title"), filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=80)]
    )
    body = TextAreaField(
        _l("Message (an unsubscribe link is added)"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=2000)],
    )

    def rule_values(self) -> dict[str, object]:
        """The rule's conditions (an announcement has no ``active`` of its own)."""
        return {
            "tier_id": self.tier_id.data or None,
            "min_tenure_days": self.min_tenure_days.data,
            "max_member_number": self.max_member_number.data,
            "min_seasons_paid": self.min_seasons_paid.data,
            "staff_only": self.staff_only.data,
        }


@bp.get("/communities/<int:community_id>/announcements")
@requires("perks.manage")
def announcement_list(community_id: int):
    community = load_for(Community, community_id, "perks.manage")
    return render_template(
        "admin/perks/announcements.html",
        community=community,
        items=db.session.scalars(
            sa.select(Announcement)
            .where(Announcement.community_id == community.id)
            .order_by(Announcement.id.desc())
        ).all(),
    )


@bp.route("/communities/<int:community_id>/announcements/new", methods=["GET", "POST"])
@bp.route("/announcements/<int:announcement_id>/edit", methods=["GET", "POST"])
@requires("perks.manage")
def announcement_form(community_id: int | None = None, announcement_id: int | None = None):
    """Write an announcement, or change it until it is sent."""
    item = load_for(Announcement, announcement_id, "perks.manage") if announcement_id else None
    community = item.community if item else load_for(Community, community_id, "perks.manage")
    if item is not None and item.sent_at is not None:
        flash(_("A sent announcement cannot be changed"), "error")
        return redirect(url_for(".announcement", announcement_id=item.id))
    form = AnnouncementForm(obj=item)
    _rule_choices(form, community)
    if form.validate_on_submit():
        if item is None:
            item = Announcement(
                community=community, created_by=current_user.actor, created_at=utcnow()
            )
            db.session.add(item)
        _save(
            item,
            {**form.rule_values(), "title": form.title.data, "body": form.body.data},
            "announcement.saved",
        )
        db.session.commit()
        flash(_("Saved; preview it, then send"), "ok")
        return redirect(url_for(".announcement", announcement_id=item.id))
    return render_template(
        "admin/perks/form.html",
        form=form,
        community=community,
        title=_("Announcement"),
        obj=item,
    )


@bp.get("/announcements/<int:announcement_id>")
@requires("perks.manage")
def announcement(announcement_id: int):
    """The announcement, whom it would reach now (a count and a sample), and once sent,
    how its messages stand."""
    item = load_for(Announcement, announcement_id, "perks.manage")
    return render_template(
        "admin/perks/announcement.html",
        item=item,
        community=item.community,
        preview=announcements.preview(item, now=utcnow()),
        progress=announcements.progress(item) if item.sent_at else None,
    )


@bp.post("/announcements/<int:announcement_id>/send")
@requires("perks.manage")
def send_announcement(announcement_id: int):
    """Queue the announcement to the members its rule selects, in one insert; the outbox's
    worker sends. Sending again queues only members selected since."""
    item = load_for(Announcement, announcement_id, "perks.manage")
    queued = announcements.send(item, actor=current_user.actor, now=utcnow())
    db.session.commit()
    flash(ngettext("%(num)d message queued", "%(num)d messages queued", queued), "ok")
    return redirect(url_for(".announcement", announcement_id=item.id))


#: What this package's audit actions and tables are called on the audit log.
audit.register_labels(
    {
        "announcement.sent": _l("Announcement sent"),
        "coupon.campaign_generated": _l("Coupon codes made"),
        "coupon.campaign_exported": _l("Coupon codes exported"),
        "coupon.granted": _l("Coupon given"),
        "coupon.reserved": _l("Coupon reserved"),
        "coupon.consumed": _l("Coupon used"),
        "coupon.released": _l("Coupon released"),
        "course.launched": _l("Course on sale"),
        "enrolment.started": _l("Course purchase started"),
        "enrolment.paid": _l("Course paid"),
        "enrolment.given": _l("Course place given"),
        "enrolment.restored": _l("Course access restored"),
        "enrolment.active": _l("Course access active"),
        "enrolment.suspended": _l("Course access suspended"),
        "enrolment.revoked": _l("Course access revoked"),
        "perk.redeemed": _l("Perk claimed"),
        "perk.redeemed_for": _l("Perk claimed for a member"),
        "member.unsubscribed": _l("Unsubscribed from announcements"),
    },
    {
        "perks": _l("Perk"),
        "coupons": _l("Coupon"),
        "courses": _l("Course"),
        "enrolments": _l("Course place"),
        "announcements": _l("Announcement"),
    },
)

#: What the details of this package's entries are called: an edit's fields as its form
#: names them, and the rest; what a coupon was reserved for and perks' kinds by their names.
audit.register_details(
    {
        **field_labels(PerkForm, CouponForm, CampaignForm, CourseForm, OfferForm, AnnouncementForm),
        "campaign": _l("Campaign"),
        "course": _l("Course"),
        "offer": _l("Offer"),
        "redeemed_count": _l("Claimed so far"),
        "selected": _l("Selected"),
        "queued": _l("Messages queued"),
        "told": _l("Members told"),
        "use": _l("Coupon use"),
    },
    {
        "kind": code_reader({"tier": _l("Tier"), "course": _l("Course")}, PERK_KIND_LABELS),
        "reason": code_reader({"order_expired": _l("Order expired")}),
    },
)
