"""The join form's fast path (membership/fresh_application.py) writes what the ORM path
writes.

The same join forms, on the same clock, tokens and codes, go into two fresh databases: one
with the fast path, one with ``JOIN_FAST_PATH`` off. Every row of every table must come out
the same, ids included (``tests.helpers.every_row``, as tests/test_paid_join.py compares)."""

from __future__ import annotations

import itertools
import secrets

import pytest

from core.clock import utcnow
from core.db import db
from membership import views
from membership.cli import seed_demo_community
from membership.models import ContactKind, Member
from tests.conftest import fresh_database
from tests.helpers import PROSPECT, add_coupon, every_row, open_join_form

#: A member's phone: a prospect who types it is told nothing, and the member is told.
MEMBER_PHONE = "13700000001"
#: The contact a prospect sends four forms with: the fourth gets no code (three per
#: contact in 15 minutes), its application made all the same.
REPEATED_PHONE = "13800000002"

#: (tier, fields besides ``PROSPECT``'s, whether the fast path takes it).
FORMS = [
    ("main", {"contact_value": REPEATED_PHONE}, True),
    ("main", {"contact_kind": "email", "contact_value": "Reader@Example.com"}, True),
    ("main", {"contact_value": MEMBER_PHONE}, True),
    ("main", {"contact_value": "13800000003", "coupon": "VIP20"}, False),
    ("lobby", {"contact_value": "13800000004"}, False),
    ("main", {"contact_value": REPEATED_PHONE}, True),
    ("main", {"contact_value": REPEATED_PHONE}, True),
    ("main", {"contact_value": "+86 138-0000-0002", "wechat_id": ""}, True),
]


def _prepare(app) -> None:
    """The demo community, a member, a coupon."""
    with app.app_context():
        community = seed_demo_community()
        db.session.add(
            Member(
                community=community,
                display_name="老成员",
                contact_kind=ContactKind.PHONE,
                contact_value=MEMBER_PHONE,
                created_at=utcnow(),
            )
        )
        db.session.commit()
    add_coupon(app, tiers=["main"])


def _send_forms(app) -> list[int]:
    """Each of :data:`FORMS` opened and sent from a browser of its own, the first sent
    twice (a double click): the statuses of the answers."""
    statuses = []
    for number, (tier, fields, _fast) in enumerate(FORMS):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.0.0.{number + 1}"
        data = {**open_join_form(client, tier), **PROSPECT, **fields}
        for _time in range(2 if number == 0 else 1):
            statuses.append(client.post(f"/join/demo/{tier}", data=data).status_code)
    return statuses


@pytest.mark.committing
def test_the_fast_path_writes_every_row_the_orm_path_writes(
    tmp_path, _api_server, request, monkeypatch
):
    """New prospects by phone and by e-mail, one typing a member's phone, one whose code is
    refused (a fourth form to one contact), one spelling a phone the way people type it,
    a form sent twice; and beside them the ORM path's cases (a coupon typed, a free
    tier): the two paths leave the same rows behind."""
    _now, reset_tokens = request.getfixturevalue("repeatable")
    taken = []
    real = views.submit_fresh_application

    def counting(*args, **kwargs):
        application = real(*args, **kwargs)
        taken.append(application.public_id)
        return application

    monkeypatch.setattr(views, "submit_fresh_application", counting)
    runs = {}
    for fast in (True, False):
        reset_tokens()
        codes = itertools.count(100_000)
        monkeypatch.setattr(secrets, "randbelow", lambda _n, codes=codes: next(codes))
        folder = tmp_path / ("fast" if fast else "orm")
        folder.mkdir()
        with fresh_database(folder, _api_server, JOIN_FAST_PATH=fast) as app:
            _prepare(app)
            assert _send_forms(app) == [302] * (len(FORMS) + 1)
            runs[fast] = every_row(app)
        if fast:
            assert len(taken) == sum(fast for _tier, _fields, fast in FORMS)
    assert len(taken) == sum(fast for _tier, _fields, fast in FORMS)  # none with it off
    assert runs[True].keys() == runs[False].keys()
    for table in runs[True]:
        assert runs[True][table] == runs[False][table], table
    rows = runs[True]
    assert len(rows["applications"]) == len(FORMS)
    assert len(rows["login_codes"]) == len(FORMS) - 1  # the fourth to one contact refused
    notices = [m for m in rows["outbox_messages"] if m["kind"] == "notice"]
    assert len(notices) == 1  # the member told
    actions = {entry["action"] for entry in rows["audit_entries"]}
    assert {"order.created", "application.submitted"} <= actions
