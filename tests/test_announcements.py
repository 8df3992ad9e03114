"""Announcements: the preview's count and sample follow the rule and the unsubscribes, one
message per selected member is queued with its routes and unsubscribe link, sending again
adds nothing, progress is read from the outbox, only perk managers may, and 10,000
recipients are queued by one request."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core import auth
from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.outbox import MessageKind, OutboxMessage, OutboxStatus
from core.sms import TEMPLATE_PARAMETERS
from membership import figures
from membership.models import Community, ContactKind, Member, Membership, MembershipStatus, Tier
from perks.announcements import message_key, selected_members
from perks.eligibility import community_standings, is_eligible
from perks.models import Announcement, Unsubscribe
from tests.helpers import csrf_token, log_in

#: One member of the demo community per row: display name, number, contact, openid,
#: membership status, days since they joined.
PEOPLE = [
    ("甲 Founder", 1, ("phone", "13900000001"), None, MembershipStatus.ACTIVE, 400),
    ("乙 Founder", 2, ("email", "yi@example.cn"), None, MembershipStatus.ACTIVE, 10),
    ("丙 Gone quiet", 3, ("phone", "13900000003"), None, MembershipStatus.ACTIVE, 400),
    ("丁 Expired", 4, ("phone", "13900000004"), None, MembershipStatus.EXPIRED, 400),
    ("戊 WeChat ID", 5, ("wechat", "wu_reader"), None, MembershipStatus.ACTIVE, 400),
    ("己 Newcomer", 60, ("phone", "13900000060"), "openid-ji", MembershipStatus.ACTIVE, 5),
]


@pytest.fixture
def people(app, demo) -> dict[str, int]:
    """The members of ``PEOPLE`` (甲 on the staff, 丙 unsubscribed), their ids by the
    first character of their name."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        now, ids = utcnow(), {}
        for name, number, (kind, value), openid, status, days in PEOPLE:
            member = Member(
                community=community,
                display_name=name,
                contact_kind=ContactKind(kind),
                contact_value=value,
                wechat_openid=openid,
                number=number,
                number_label=f"{number:04d}",
                staff_number=1 if number == 1 else None,
                created_at=now,
            )
            db.session.add(member)
            db.session.add(
                Membership(
                    member=member, tier=main, status=status, starts_at=now - timedelta(days=days)
                )
            )
            db.session.flush()
            ids[name[0]] = member.id
        db.session.add(Unsubscribe(member_id=ids["丙"], created_at=now))
        db.session.commit()
        return ids


def write(client, community_id: int, **fields) -> int:
    """Write an announcement on the admin page; its id."""
    url = f"/admin/communities/{community_id}/announcements/new"
    data = {"title": "周末分享会", "body": "本周六晚八点，线上分享。", "tier_id": "0", **fields}
    response = client.post(url, data={"csrf_token": csrf_token(client, url), **data})
    assert response.status_code == 302, response.text
    return int(response.location.rstrip("/").rsplit("/", 1)[1])


def send(client, announcement_id: int):
    page = f"/admin/announcements/{announcement_id}"
    return client.post(f"{page}/send", data={"csrf_token": csrf_token(client, page)})


def queued_for(announcement_id: int) -> list[OutboxMessage]:
    return db.session.scalars(
        sa.select(OutboxMessage)
        .where(OutboxMessage.dedupe_key.like(f"announcement:{announcement_id}:%"))
        .order_by(OutboxMessage.member_id)
    ).all()


def community_id(app) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(Community.id))


def test_the_preview_counts_and_names_whom_the_rule_selects_minus_the_unsubscribed(
    app, people, logged_in
):
    founders = write(logged_in, community_id(app), max_member_number="10")
    page = logged_in.get(f"/admin/announcements/{founders}").text
    # 甲 and 乙; not 丙 (unsubscribed), 丁 (expired), 己 (number 60); 戊 has no channel.
    assert 'id="preview-count">2<' in page
    assert 'id="unreachable">1<' in page
    assert "甲 Founder" in page and "0001" in page and "乙 Founder" in page
    assert not any(name in page for name in ("丙", "丁", "己"))

    veterans = write(logged_in, community_id(app), min_tenure_days="30")
    page = logged_in.get(f"/admin/announcements/{veterans}").text
    assert 'id="preview-count">1<' in page and "甲 Founder" in page and "乙" not in page


def test_the_selection_is_the_perks_rule_read_in_columns(app, people):
    """selected_members reads plain columns for speed; it must select exactly whom
    is_eligible selects from the members' ORM standings, for every kind of condition."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        lobby = db.session.scalar(sa.select(Tier).where(Tier.code != "main"))
        rules = [
            {},
            {"tier_id": main.id, "tier": main},
            {"tier_id": lobby.id, "tier": lobby},
            {"min_tenure_days": 30},
            {"max_member_number": 2},
            {"min_seasons_paid": 1},
            {"staff_only": True},
        ]
        now = utcnow()
        for rule in rules:
            announcement = Announcement(community_id=community.id, **{"staff_only": False, **rule})
            expected = {
                s.member.id
                for s in community_standings(community.id, now=now)
                if is_eligible(announcement, s) and s.member.id != people["丙"]
            }
            selected = {s.member.id for s in selected_members(announcement, community.id, now=now)}
            assert selected == expected, rule


def test_sending_queues_one_message_per_member_with_its_routes_and_unsubscribe_link(
    app, people, logged_in
):
    everyone = write(logged_in, community_id(app))
    assert send(logged_in, everyone).status_code == 302
    with app.app_context():
        messages = queued_for(everyone)
        routes = {m.member_id: m.routes for m in messages}
        assert routes == {
            people["甲"]: [["sms", "13900000001"]],
            people["乙"]: [["email", "yi@example.cn"]],
            people["己"]: [["wechat", "openid-ji"], ["sms", "13900000060"]],
        }
        for message in messages:
            assert message.kind is MessageKind.ANNOUNCEMENT
            assert message.status is OutboxStatus.PENDING  # the worker sends, not the request
            assert message.dedupe_key == message_key("announcement", everyone, message.member_id)
            assert message.body.startswith("本周六晚八点，线上分享。\n退订：http")
            assert "/unsubscribe/" in message.params["unsubscribe"]
            assert set(TEMPLATE_PARAMETERS["announcement"]) <= set(message.params)  # SMS can go
            assert message.subject.endswith("周末分享会")
        item = db.session.get(Announcement, everyone)
        assert item.recipients == 3 and item.sent_at is not None
        link = messages[0].params["unsubscribe"]
    # The link works: that member is left out of the next announcement.
    path = link.split("qunmen.test", 1)[1]
    member = app.test_client()
    member.post(path, data={"csrf_token": csrf_token(member, path)})
    later = write(logged_in, community_id(app))
    assert 'id="preview-count">2<' in logged_in.get(f"/admin/announcements/{later}").text


def test_sending_twice_queues_nothing_new_but_reaches_members_selected_since(
    app, people, logged_in
):
    everyone = write(logged_in, community_id(app))
    send(logged_in, everyone)
    nothing_new = send(logged_in, everyone)
    assert "已排队 0 条消息" in logged_in.get(nothing_new.location).text
    with app.app_context():
        assert len(queued_for(everyone)) == 3
        assert db.session.get(Announcement, everyone).recipients == 3
        db.session.delete(db.session.scalar(sa.select(Unsubscribe)))  # 丙 subscribes again
        db.session.commit()
    logged_in.get("/lang/en")
    response = send(logged_in, everyone)
    assert "1 message queued" in logged_in.get(response.location).text  # not "1 messages"
    with app.app_context():
        assert [m.member_id for m in queued_for(everyone)].count(people["丙"]) == 1
        assert db.session.get(Announcement, everyone).recipients == 4
        sends = db.session.scalars(
            sa.select(AuditEntry.data).where(AuditEntry.action == "announcement.sent")
        ).all()
        assert [s["queued"] for s in sends] == [3, 0, 1]
    # Sent: it cannot be changed any more.
    edit = logged_in.get(f"/admin/announcements/{everyone}/edit")
    assert edit.status_code == 302


def test_the_page_shows_progress_from_the_outbox(app, people, logged_in):
    everyone = write(logged_in, community_id(app))
    send(logged_in, everyone)
    with app.app_context():
        first, second, _ = queued_for(everyone)
        first.status, second.status = OutboxStatus.SENT, OutboxStatus.FAILED
        db.session.commit()
    page = logged_in.get(f"/admin/announcements/{everyone}").text
    assert '<td class="queued">1</td><td class="sent">1</td><td class="failed">1</td>' in page
    listing = logged_in.get(f"/admin/communities/{community_id(app)}/announcements").text
    assert "周末分享会" in listing and '<td class="recipients">3</td>' in listing


def test_a_moderator_can_neither_see_nor_send_announcements(app, people, logged_in):
    everyone = write(logged_in, community_id(app))
    with app.app_context():
        auth.create_staff_user(
            "mod@example.com", "版主", "first password", actor="test", role="moderator"
        )
        db.session.commit()
    moderator = app.test_client()
    assert log_in(moderator, email="mod@example.com", password="first password").status_code == 302
    base = f"/admin/communities/{community_id(app)}/announcements"
    for url in (base, f"{base}/new", f"/admin/announcements/{everyone}"):
        assert moderator.get(url).status_code == 403, url
    token = csrf_token(moderator, "/admin/")
    response = moderator.post(f"/admin/announcements/{everyone}/send", data={"csrf_token": token})
    assert response.status_code == 403
    with app.app_context():
        assert queued_for(everyone) == []


def test_ten_thousand_recipients_are_queued_by_one_request(app, demo, logged_in):
    """Speed is reported by bench/announce.py, not asserted; the figure is printed."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        now = utcnow()
        ids = db.session.scalars(
            sa.insert(Member).returning(Member.id),
            [
                {
                    "community_id": community.id,
                    "display_name": f"成员{i}",
                    "contact_kind": ContactKind.PHONE,
                    "contact_value": f"138{i:08d}",
                    "number": i + 1,
                    "number_label": f"{i + 1:05d}",
                    "created_at": now,
                }
                for i in range(10_000)
            ],
        ).all()
        db.session.execute(
            sa.insert(Membership),
            [
                {
                    "member_id": i,
                    "tier_id": main.id,
                    "status": MembershipStatus.ACTIVE,
                    "starts_at": now,
                }
                for i in ids
            ],
        )
        figures.rebuild(db.session, [community.id])  # bulk rows skip the hooks that count
        db.session.commit()
    everyone = write(logged_in, community_id(app))
    token = csrf_token(logged_in, f"/admin/communities/{community_id(app)}/announcements")
    started = time.perf_counter()
    response = logged_in.post(f"/admin/announcements/{everyone}/send", data={"csrf_token": token})
    elapsed = time.perf_counter() - started
    assert response.status_code == 302
    print(f"\n10,000 recipients queued in one request: {elapsed:.2f} s")
    with app.app_context():
        assert len(queued_for(everyone)) == 10_000
        assert db.session.get(Announcement, everyone).recipients == 10_000


def test_each_member_reads_the_announcement_in_their_own_language(app, people, logged_in):
    """The text around the admin's (the subject's form, the unsubscribe line) is in each
    member's language: theirs, else the community's; not the language of the admin's page."""
    logged_in.get("/lang/en")  # the admin writes from an English page
    with app.app_context():
        db.session.get(Member, people["乙"]).locale = "en"
        db.session.commit()
    everyone = write(logged_in, community_id(app))
    assert send(logged_in, everyone).status_code == 302
    with app.app_context():
        by_member = {m.member_id: m for m in queued_for(everyone)}
    english, chinese = by_member[people["乙"]], by_member[people["己"]]
    assert english.subject == "群门读书会: 周末分享会"
    assert english.body.startswith("本周六晚八点，线上分享。\nUnsubscribe: http")
    assert chinese.subject == "群门读书会：周末分享会"
    assert chinese.body.startswith("本周六晚八点，线上分享。\n退订：http")
