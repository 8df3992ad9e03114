"""Findings of the admin review (issue 15): who sees money, whose membership an admin page
may end, free renewals, plain values for file fields, anonymous admins, search wildcards."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core.auth import create_staff_user
from core.db import db
from membership.models import Member, Membership, MembershipStatus
from tests.helpers import ADMIN_PASSWORD, join_and_pay, log_in, submit_form

REVENUE = "近30天收入"


def _staff(app, role: str) -> str:
    """A staff account with ``role``; its e-mail."""
    email = f"{role}@example.com"
    with app.app_context():
        create_staff_user(email, role, ADMIN_PASSWORD, actor="test", role=role)
        db.session.commit()
    return email


@pytest.mark.parametrize(
    ("role", "sees"), [("moderator", False), ("admin", False), ("finance", True), ("owner", True)]
)
def test_only_staff_with_the_money_permission_see_revenue(app, demo, role, sees):
    join_and_pay(app.test_client())  # ¥99 of revenue today
    browser = app.test_client()
    assert log_in(browser, _staff(app, role)).status_code == 302
    page = browser.get(f"/admin/communities/{demo.id}")
    assert page.status_code == 200
    assert (REVENUE in page.text) is sees
    assert ("99.00 CNY" in page.text) is sees  # the total (tier prices show as ¥99.00)
    assert ('aria-label="每日收入' in page.text) is sees  # the chart of revenue per day
    assert 'id="funnel"' in page.text  # counts of people are not money


def test_a_members_page_cannot_end_another_members_membership(app, demo, logged_in):
    join_and_pay(app.test_client(), display_name="甲")
    join_and_pay(app.test_client(), display_name="乙")
    with app.app_context():
        first, second = db.session.scalars(sa.select(Member).order_by(Member.id)).all()
        first_id, second_membership = first.id, second.memberships[0].id
    response = submit_form(
        logged_in,
        f"/admin/members/{first_id}",
        {"action": "end", "membership": str(second_membership), "reason": "别人的"},
    )
    assert response.status_code == 404
    with app.app_context():
        assert db.session.get(Membership, second_membership).status is MembershipStatus.ACTIVE
