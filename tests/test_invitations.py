"""Invitations: the QR only behind a valid token; full groups make invitations wait."""

from __future__ import annotations

import sqlalchemy as sa

from core.db import db
from membership.models import Community, Group, Invitation, InvitationStatus, Member, Tier
from tests.helpers import join_and_pay, submit_form


def _token(app) -> str:
    with app.app_context():
        return db.session.scalars(sa.select(Invitation.token)).one()


def _set_main_group_capacity(app, capacity: int) -> None:
    with app.app_context():
        group = db.session.scalar(sa.select(Group).where(Group.name == "正式一群 · Main 1"))
        group.capacity = capacity
        db.session.commit()


def test_wrong_token_reveals_nothing(app, client, demo):
    join_and_pay(client, "main")
    token = _token(app)
    wrong_path = "/invitations/" + token[:-1] + ("A" if token[-1] != "A" else "B")
    wrong, missing = client.get(wrong_path), client.get("/invitations/nothing-here")
    assert wrong.status_code == missing.status_code == 404
    # No hint that the first was close: the pages differ only in the path each names (the
    # language switch returns to it).
    assert wrong.text.replace(wrong_path, "") == missing.text.replace(
        "/invitations/nothing-here", ""
    )
    for path in ("/invitations/nothing-here/qr", f"/invitations/{token}x/qr"):
        response = client.get(path)
        assert response.status_code == 404
        assert not response.data.startswith(b"\x89PNG")


def test_valid_token_shows_the_group(app, client, demo):
    join_and_pay(client, "main")
    token = _token(app)
    html = app.test_client().get(f"/invitations/{token}").get_data(as_text=True)
    assert "正式一群 · Main 1" in html
    assert f"/invitations/{token}/qr" in html


def test_revoked_invitation_reveals_nothing(app, client, demo):
    status_path = join_and_pay(client, "main")
    token = _token(app)
    with app.app_context():
        db.session.scalars(sa.select(Invitation)).one().status = InvitationStatus.REVOKED
        db.session.commit()
    assert client.get(f"/invitations/{token}").status_code == 404
    assert client.get(f"/invitations/{token}/qr").status_code == 404
    html = client.get(status_path).get_data(as_text=True)
    assert "/invitations/" not in html
    assert "<img" not in html


def test_full_group_makes_the_invitation_wait_and_admins_see_it(app, demo, logged_in):
    _set_main_group_capacity(app, 1)
    join_and_pay(app.test_client(), "main")
    second = app.test_client()
    status_path = join_and_pay(second, "main")

    html = second.get(status_path).get_data(as_text=True)
    assert 'id="member-number">0002<' in html  # paid and numbered all the same
    assert "群已满" in html
    assert "/invitations/" not in html
    with app.app_context():
        statuses = db.session.scalars(sa.select(Invitation.status).order_by(Invitation.id))
        assert list(statuses) == [InvitationStatus.ISSUED, InvitationStatus.WAITING]
        community_id = db.session.scalar(sa.select(Community.id))

    page = logged_in.get(f"/admin/communities/{community_id}").get_data(as_text=True)
    assert "1 位已付费成员在等待入群" in page
    assert "0002" in page
    dashboard = logged_in.get("/admin/").get_data(as_text=True)
    assert 'class="status waiting">1<' in dashboard


def test_a_new_group_places_waiting_invitations(app, demo, logged_in):
    _set_main_group_capacity(app, 0)
    second = app.test_client()
    status_path = join_and_pay(second, "main")
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    url = f"/admin/communities/{community_id}/groups/new"
    response = submit_form(
        logged_in,
        url,
        {
            "name": "正式二群 · Main 2",
            "platform": "wechat",
            "capacity": "500",
            "join_link": "https://example.com/join/main-2",
        },
    )
    assert response.status_code == 302
    # The new group is not yet one of the tier's groups: nothing placed.
    with app.app_context():
        assert db.session.scalars(sa.select(Invitation.status)).one() is InvitationStatus.WAITING
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        new_group = db.session.scalar(sa.select(Group).where(Group.name == "正式二群 · Main 2"))
        tier_id, group_ids = tier.id, [g.id for g in tier.groups] + [new_group.id]
    url = f"/admin/tiers/{tier_id}/edit"
    form = {
        "code": "main",
        "name": "正式成员 · Member",
        "kind": "paid",
        "price": "99.00",
        "audience": "everyone",
        "active": "y",
        "sort_order": "1",
        "groups": [str(i) for i in group_ids],
    }
    assert submit_form(logged_in, url, form).status_code == 302
    with app.app_context():
        invitation = db.session.scalars(sa.select(Invitation)).one()
        assert invitation.status is InvitationStatus.ISSUED
        assert invitation.group.name == "正式二群 · Main 2"
        assert db.session.scalar(sa.select(Member.number_label)) == "0001"
    html = second.get(status_path).get_data(as_text=True)
    assert "https://example.com/join/main-2" in html
