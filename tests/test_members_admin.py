"""Members in bulk: search and filters, access granted or ended by hand, CSV export."""

from __future__ import annotations

import csv
import io
from unittest.mock import ANY

import sqlalchemy as sa

from core.audit import AuditEntry
from core.db import db
from membership import admin as admin_views
from membership.models import (
    Community,
    InvitationStatus,
    Member,
    MembershipStatus,
    Tier,
)
from tests.helpers import add_members, join_and_pay, statements, submit_form, submit_join


def _community_id(app) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(Community.id))


def test_search_and_filters(app, demo, logged_in):
    join_and_pay(app.test_client(), "main", display_name="张三")
    join_and_pay(app.test_client(), "main", display_name="李四")
    submit_join(app.test_client(), "lobby", provider=None, display_name="王五")
    url = f"/admin/communities/{_community_id(app)}/members"
    assert "(1)" in logged_in.get(url, query_string={"q": "0002"}).text
    by_name = logged_in.get(url, query_string={"q": "张"}).text
    assert "张三" in by_name
    assert "李四" not in by_name
    with app.app_context():
        lobby_id = db.session.scalar(sa.select(Tier.id).where(Tier.code == "lobby"))
    lobby = logged_in.get(url, query_string={"tier": lobby_id}).text
    assert "王五" in lobby
    assert "张三" not in lobby
    assert "(0)" in logged_in.get(url, query_string={"state": "purged"}).text


def test_grant_and_end_by_hand_with_a_reason(app, demo, logged_in):
    submit_join(app.test_client(), "lobby", provider=None, display_name="嘉宾")
    with app.app_context():
        member_id = db.session.scalar(sa.select(Member.id))
        main_id = db.session.scalar(sa.select(Tier.id).where(Tier.code == "main"))
    url = f"/admin/members/{member_id}"
    granted = submit_form(
        logged_in, url, {"action": "grant", "tier": str(main_id), "reason": "特邀嘉宾"}
    )
    assert granted.status_code == 302
    again = submit_form(logged_in, url, {"action": "grant", "tier": str(main_id), "reason": "x"})
    assert "已有该档位" in logged_in.get(again.location).text
    with app.app_context():
        member = db.session.get(Member, member_id)
        assert member.number_label == "0001"  # a paid tier numbers them
        main = next(m for m in member.memberships if m.tier_id == main_id)
        main_membership_id = main.id
    ended = submit_form(
        logged_in,
        url,
        {"action": "end", "membership": str(main_membership_id), "reason": "违反群规"},
    )
    assert ended.status_code == 302
    with app.app_context():
        member = db.session.get(Member, member_id)
        main = next(m for m in member.memberships if m.tier_id == main_id)
        assert main.status is MembershipStatus.ENDED
        revoked = [i for i in member.invitations if i.membership_id == main.id]
        assert [i.status for i in revoked] == [InvitationStatus.REVOKED]
        reasons = db.session.scalars(
            sa.select(AuditEntry.data)
            .where(AuditEntry.action.in_(["membership.granted", "membership.ended"]))
            .order_by(AuditEntry.id)
        ).all()
    assert [r["reason"] for r in reasons] == ["特邀嘉宾", "违反群规"]
    missing_reason = submit_form(logged_in, url, {"action": "end", "membership": "1"})
    assert "必填" in missing_reason.text


def test_members_csv_export(app, demo, logged_in):
    join_and_pay(app.test_client(), "main", display_name="=cmd|' /C calc'!A0")
    url = f"/admin/communities/{_community_id(app)}/members.csv"
    response = logged_in.get(url)
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0][:2] == ["编号", "昵称"]
    assert rows[1][0] == "0001"
    assert rows[1][1].startswith("'=")  # defused
    assert rows[1][2:] == ["手机", ANY, "正式成员:有效", ANY, ANY]  # words, not codes
    logged_in.get("/lang/en")
    rows = list(csv.reader(io.StringIO(logged_in.get(url).get_data(as_text=True))))
    assert rows[1][2] == "phone" and rows[1][4] == "正式成员:Active"  # the tier's own name


def test_staff_are_numbered_in_their_own_series(app, demo, logged_in):
    join_and_pay(app.test_client(), "main", display_name="李老师")
    join_and_pay(app.test_client(), "main", display_name="王老师")
    with app.app_context():
        teacher_ids = db.session.scalars(sa.select(Member.id).order_by(Member.id)).all()
    for member_id in teacher_ids:
        url = f"/admin/members/{member_id}"
        submit_form(logged_in, url, {"action": "staff", "reason": "授课老师"})
    again = submit_form(
        logged_in, f"/admin/members/{teacher_ids[0]}", {"action": "staff", "reason": "x"}
    )
    assert "已有工作人员编号" in logged_in.get(again.location).text
    with app.app_context():
        labels = db.session.execute(
            sa.select(Member.number_label, Member.staff_number_label).order_by(Member.id)
        ).all()
    assert labels == [("0001", "LS-01"), ("0002", "LS-02")]  # apart from member numbers


def test_search_by_whole_contact_number_or_part(app, demo, logged_in):
    join_and_pay(app.test_client(), "main", display_name="电话找", contact_value="13911112222")
    join_and_pay(app.test_client(), "main", display_name="别人", contact_value="13733334444")
    url = f"/admin/communities/{_community_id(app)}/members"
    for typed in ("13911112222", "+8613911112222", "1111222", "#1", "0001"):
        page = logged_in.get(url, query_string={"q": typed}).text
        assert "电话找" in page and "别人" not in page, typed
    assert "(0)" in logged_in.get(url, query_string={"q": "13911112223"}).text


def test_the_members_list_costs_the_same_statements_for_5_or_25_members(app, demo, logged_in):
    """No statement per row: a page's memberships and invitations load together."""
    url = f"/admin/communities/{_community_id(app)}/members"

    def statements_for_page() -> int:
        with statements(app) as seen:
            assert logged_in.get(url).status_code == 200
        return len(seen)

    for _ in range(5):
        join_and_pay(app.test_client(), "main")
    few = statements_for_page()
    for _ in range(20):
        join_and_pay(app.test_client(), "main")
    assert statements_for_page() == few


def test_the_list_counts_up_to_a_cap_and_its_pages_keep_the_search(
    app, demo, logged_in, monkeypatch
):
    """Past the cap the count says "at least", yet every page and its "Next" are right,
    and paging keeps the search."""
    monkeypatch.setattr(admin_views, "PAGE_SIZE", 2)
    monkeypatch.setattr(admin_views, "COUNT_CAP", 3)
    community_id = add_members(app, {f"同名{i}": i + 1 for i in range(7)} | {"别人": None})
    url = f"/admin/communities/{community_id}/members"

    def page(number: int) -> str:
        return logged_in.get(url, query_string={"q": "同名", "page": number}).text

    first = page(1)
    assert "(3+)" in first and "1 / 2+" in first
    assert "同名0" in first and "同名1" in first and "别人" not in first
    assert "q=%E5%90%8C%E5%90%8D&amp;page=2" in first  # the search goes along
    third = page(3)
    assert "(6+)" in third and "同名4" in third and "page=4" in third
    last = page(4)
    assert "(7)" in last and "4 / 4<" in last and "同名6" in last
    assert "page=5" not in last
    assert "(8)" in logged_in.get(url, query_string={"page": 4}).text
