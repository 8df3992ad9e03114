"""The member's side: perks and coupons on their page, redeeming, course pages and buying,
upsell offers, and unsubscribing from course announcements."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from core.clock import utcnow
from core.db import db
from core.i18n import belongs_to_community
from core.security import new_token, unsign
from membership.models import Community, Member
from membership.views import check_typed_price, logged_in_member, offer_providers
from payments.discounts import DiscountRefused
from payments.models import Order, OrderStatus
from payments.views import (
    apply_discount_code,
    claim_discount_code_try,
    refuse_discount_code,
    send_to_provider,
)
from perks.courses import (
    CoursePrice,
    CourseRefused,
    enrolment_of,
    price_for,
    start_purchase,
    unsubscribe,
    upsells_for,
)
from perks.eligibility import standing_of
from perks.forms import CourseBuyForm
from perks.models import CouponGrant, Course, Enrolment, EnrolmentStatus, Perk, Unsubscribe
from perks.services import PerkRefused, perks_for, redeem, redemptions_of

bp = Blueprint("perks", __name__)


@bp.app_context_processor
def member_benefits():
    """``benefits(member)`` for the member's page (perks, coupons, courses and offers) and
    ``member_upsells(member)`` for the payment success page, read when a template asks."""

    def benefits(member: Member) -> dict[str, object]:
        now = utcnow()
        standing = standing_of(member, now=now)
        return {
            "perks": perks_for(standing),
            "redemptions": redemptions_of(member),
            "coupons": db.session.scalars(
                sa.select(CouponGrant)
                .where(CouponGrant.member_id == member.id)
                .options(selectinload(CouponGrant.coupon))
                .order_by(CouponGrant.id)
            ).all(),
            "courses": db.session.scalars(
                sa.select(Enrolment)
                .where(
                    Enrolment.member_id == member.id,
                    Enrolment.status == EnrolmentStatus.ACTIVE,
                )
                .options(selectinload(Enrolment.course))
            ).all(),
            "upsells": upsells_for(standing, now=now),
        }

    def member_upsells(member: Member) -> list[CoursePrice]:
        now = utcnow()
        return upsells_for(standing_of(member, now=now), now=now)

    return {"benefits": benefits, "member_upsells": member_upsells}


@bp.post("/me/perks/<int:perk_id>/redeem")
def redeem_perk(perk_id: int):
    member = logged_in_member()
    perk = db.session.get(Perk, perk_id)
    if member is None or perk is None or perk.community_id != member.community_id:
        abort(404)
    now = utcnow()
    try:
        redeem(perk, standing_of(member, now=now), now=now)
        db.session.commit()
    except PerkRefused as refusal:
        db.session.rollback()
        flash(str(refusal), "error")
        return redirect(url_for("membership.me"), 303)
    flash(_("Redeemed: %(perk)s", perk=perk.name), "ok")
    return redirect(url_for("membership.me"), 303)


def _course(slug: str, code: str) -> Course:
    course = db.session.scalar(
        sa.select(Course)
        .join(Community, Community.id == Course.community_id)
        .where(Community.slug == slug, Course.code == code)
    )
    if course is None or not course.active:
        abort(404)
    belongs_to_community(course.community_id)
    return course


@bp.route("/courses/<slug>/<code>", methods=["GET", "POST"])
def course(slug: str, code: str):
    """A course: its price for the logged-in member (with their offer's saving), and
    buying it with an optional coupon; once bought, its content link."""
    course = _course(slug, code)
    member = logged_in_member(course.community)
    form = CourseBuyForm()
    offer_providers(form, course.community_id)
    if not form.submission_key.data:
        form.submission_key.data = new_token(24)
    context = {"course": course, "community": course.community, "member": member, "form": form}
    if member is None:
        return render_template("perks/course.html", **context), 200
    now = utcnow()
    standing = standing_of(member, now=now)
    context.update(
        enrolment=enrolment_of(course, member), quote=price_for(course, standing, now=now)
    )
    if not form.validate_on_submit():
        return render_template("perks/course.html", **context), 422 if form.is_submitted() else 200
    try:
        claim_discount_code_try(form.coupon.data)
        enrolment = start_purchase(
            course, standing, submission_key=form.submission_key.data, now=now
        )
        order = db.session.get(Order, enrolment.order_id)
        if form.coupon.data:
            apply_discount_code(
                order,
                form.coupon.data,
                product=f"course:{course.id}",
                buyer=f"member:{member.id}",
                actor=f"member:{member.id}",
                now=now,
            )
        db.session.commit()
    except CourseRefused as refusal:
        db.session.rollback()
        return render_template("perks/course.html", **context, refusal=str(refusal)), 422
    except DiscountRefused as refusal:
        form.coupon.errors.append(refuse_discount_code(refusal))
        return render_template("perks/course.html", **context), 422
    except IntegrityError:
        # The same form, sent twice at once: the other request started the purchase.
        db.session.rollback()
        enrolment = db.session.scalar(
            sa.select(Enrolment).where(Enrolment.submission_key == form.submission_key.data)
        )
        if enrolment is None:
            raise
        order = db.session.get(Order, enrolment.order_id)
    page = url_for(".course", slug=slug, code=code, _external=True)
    if order.status is OrderStatus.PAID:
        return redirect(page, 303)
    return send_to_provider(
        order, form.provider.data, return_url=page, cancel_url=page, actor=f"member:{member.id}"
    )


@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
def unsubscribe_page(token: str):
    """The link in course announcements: a page that asks, then unsubscribes and comes
    back to itself (post-redirect-get), saying it is done."""
    member_id = unsign("unsubscribe", token)
    member = db.session.get(Member, member_id) if isinstance(member_id, int) else None
    if member is None:
        abort(404)
    belongs_to_community(member.community_id)
    if request.method == "POST":
        unsubscribe(member, now=utcnow())
        db.session.commit()
        return redirect(url_for(".unsubscribe_page", token=token), 303)
    done = db.session.scalar(sa.select(Unsubscribe.id).where(Unsubscribe.member_id == member.id))
    return render_template(
        "perks/unsubscribe.html", member=member, done=done is not None, token=token
    )


@bp.post("/courses/<slug>/<code>/price")
def course_price(slug: str, code: str):
    """The course page's "check price" button: the page again, with the member's price
    and the coupon code typed ("You save ¥X, you pay ¥Y"), or the code's refusal beside
    it. Nothing is made (no enrolment, no order)."""
    course = _course(slug, code)
    member = logged_in_member(course.community)
    if member is None or not course.on_sale:
        abort(404)
    form = CourseBuyForm()
    offer_providers(form, course.community_id)
    now = utcnow()
    quote = price_for(course, standing_of(member, now=now), now=now)
    context = {
        "course": course,
        "community": course.community,
        "member": member,
        "form": form,
        "enrolment": enrolment_of(course, member),
        "quote": quote,
    }
    if not form.coupon.validate(form):
        return render_template("perks/course.html", **context), 422
    priced = check_typed_price(
        quote.price,
        form.coupon.data,
        community_id=course.community_id,
        member_id=member.id,
        product=f"course:{course.id}",
        buyer=f"member:{member.id}",
    )
    if priced.refusal:
        form.coupon.errors.append(priced.refusal)
    return render_template(
        "perks/course.html", **context, price_check=priced
    ), 422 if priced.refusal else 200
