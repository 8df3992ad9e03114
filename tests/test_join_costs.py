"""What the join path no longer asks the database, and why the answers stay right: a
community's payment accounts are read with the community (none held: nothing more is
asked) and once per request; an event learns whether its community has subscribers from
its own INSERT. Both are read in the transaction, so a change made by another process or
instance is seen by the next request or event there."""

from __future__ import annotations

from collections.abc import Iterator

import flask_wtf.csrf
import pytest
import sqlalchemy as sa

from app import create_app
from core.clock import utcnow
from core.db import db
from core.events import Event, WebhookDelivery, record_event
from core.limits import AttemptCounter
from core.webhooks_out import create_endpoint
from membership.cli import seed_demo_community
from membership.models import Application
from payments.accounts import account_of, remove_account, save_account
from payments.models import Order
from payments.providers import get_provider
from tests.conftest import app_config, dispose_engines, fresh_database
from tests.helpers import PROSPECT, count, hidden_value, new_phone, open_join_form, statements

#: An endpoint's address; nothing is sent to it here.
HOOK = "http://127.0.0.1:9/hook"
STRIPE_SECRETS = {"STRIPE_SECRET_KEY": "sk_test_own_0001", "STRIPE_WEBHOOK_SECRET": "whsec_own"}


def give_stripe(community_id: int) -> None:
    """The community's own Stripe account, saved as the admin page saves it (flushed)."""
    save_account(
        community_id, "stripe", plain={}, secrets=STRIPE_SECRETS, cleared=set(), actor="test"
    )


def account_reads(seen: list[str]) -> list[str]:
    """The statements that read payment accounts by themselves (not with the community)."""
    return [s for s in seen if s.startswith("SELECT payment_accounts.")]


def test_an_event_with_no_subscriber_is_one_statement_and_one_with_is_delivered(
    app, demo, monkeypatch
):
    monkeypatch.setitem(app.config, "WEBHOOKS_ALLOW_PRIVATE_URLS", True)  # the address below
    with app.app_context():
        record_event(demo.id, "perk.redeemed", {"perk": 1}, now=utcnow())
        with statements(app) as seen:
            db.session.commit()
        assert len(seen) == 1 and seen[0].startswith("INSERT INTO events"), seen
        create_endpoint(demo.id, HOOK, ["perk.redeemed"], actor="test", now=utcnow())
        db.session.commit()
        record_event(demo.id, "perk.redeemed", {"perk": 2}, now=utcnow())
        record_event(demo.id, "member.admitted", {"member": 2}, now=utcnow())
        db.session.commit()
        delivered = db.session.scalars(sa.select(WebhookDelivery)).all()
        assert [d.event.data for d in delivered] == [{"perk": 2}]


@pytest.fixture
def two_instances(tmp_path, _api_server) -> Iterator[tuple]:
    """Two apps (as two processes or machines would run) on one database that commits for
    real, with the demo community; and its id."""
    with fresh_database(tmp_path, _api_server, WEBHOOKS_ALLOW_PRIVATE_URLS=True) as first:
        with first.app_context():
            url = db.engine.url.render_as_string(hide_password=False)
            community_id = seed_demo_community().id
            db.session.commit()
        second = create_app(app_config(url, *_api_server) | {"WEBHOOKS_ALLOW_PRIVATE_URLS": True})
        try:
            yield first, second, community_id
        finally:
            dispose_engines(second)


@pytest.mark.committing
def test_an_endpoint_added_in_one_instance_is_seen_by_the_next_event_in_another(two_instances):
    first, second, community_id = two_instances
    with second.app_context():
        record_event(community_id, "perk.redeemed", {"perk": 1}, now=utcnow())
        db.session.commit()
    with first.app_context():
        create_endpoint(community_id, HOOK, ["perk.redeemed"], actor="test", now=utcnow())
        db.session.commit()
    with second.app_context():
        record_event(community_id, "perk.redeemed", {"perk": 2}, now=utcnow())
        db.session.commit()
        assert db.session.scalar(sa.select(sa.func.count(Event.id))) == 2
        delivered = db.session.scalars(sa.select(WebhookDelivery)).all()
        assert [d.event.data for d in delivered] == [{"perk": 2}]


@pytest.mark.committing
def test_an_account_saved_in_one_instance_is_used_by_the_next_request_in_another(two_instances):
    first, second, community_id = two_instances
    client = second.test_client()
    with statements(second) as seen:
        assert client.get("/join/demo/main").status_code == 200
    assert account_reads(seen) == []  # none held: read with the community, nothing more
    with first.test_request_context():
        give_stripe(community_id)
        db.session.commit()
    with statements(second) as seen:
        assert client.get("/join/demo/main").status_code == 200
    assert len(account_reads(seen)) == 1  # every provider's account in one read
    with second.test_request_context():
        assert get_provider("stripe", community_id) is not get_provider("stripe")


def test_a_request_that_changes_an_account_reads_it_again(app, demo):
    with app.test_request_context():
        assert account_of(demo.id, "stripe") is None
        with statements(app) as seen:
            assert account_of(demo.id, "wechatpay") is None
        assert seen == []  # kept for the request
        give_stripe(demo.id)
        account = account_of(demo.id, "stripe")
        assert account is not None and account.provider == "stripe"
        assert get_provider("stripe", demo.id) is not get_provider("stripe")
        remove_account(account, actor="test")
        db.session.flush()
        assert account_of(demo.id, "stripe") is None
        assert get_provider("stripe", demo.id) is get_provider("stripe")


def test_accounts_held_are_read_again_in_the_next_transaction(app, demo):
    with app.test_request_context():
        give_stripe(demo.id)
        db.session.commit()
        assert account_of(demo.id, "stripe") is not None
        with statements(app) as seen:
            account_of(demo.id, "stripe")
        assert seen == []
        db.session.commit()
        with statements(app) as seen:
            assert account_of(demo.id, "stripe") is not None
        assert len(account_reads(seen)) == 1


def join_tries(app) -> int:
    """The join forms this client (the test client's address) sent in the window."""
    with app.app_context():
        counted = db.session.get(AttemptCounter, "join:client:127.0.0.1")
        return counted.count if counted is not None else 0


def test_join_tries_are_claimed_with_the_application_and_a_refused_form_counts_too(
    app, client, demo
):
    """The join's tries are claimed in its own transaction, not committed apart first: a
    form refused after it made its application (a wrong coupon) is rolled back, and its
    try is counted all the same."""
    made = rows(app)
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    response = client.post("/join/demo/main", data={**data, "coupon": "NO-SUCH-CODE"})
    assert response.status_code == 422
    assert rows(app) == made
    assert join_tries(app) == 1
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    assert client.post("/join/demo/main", data=data).status_code == 302
    assert rows(app) == (made[0] + 1, made[1] + 1)
    assert join_tries(app) == 2


def rows(app) -> tuple[int, int]:
    with app.app_context():
        return count(Application), count(Order)


#: What a new prospect's join form runs, in order (the order and the application written
#: by membership/fresh_application.py, on PostgreSQL in one statement; audit entries, event
#: and figures at the commit), by database.
NEW_PROSPECT_JOIN = [
    "SELECT communities.id",  # the community and the tier, together
    "SELECT (SELECT applications.id",  # the form sent before? the contact a member's?
    "INSERT INTO orders",
    "INSERT INTO applications",
    "INSERT INTO attempt_counters",  # the tries, all in one
    "INSERT INTO login_codes",
    "INSERT INTO outbox_messages",
    "INSERT INTO audit_entries",
    "INSERT INTO events",
    "INSERT INTO daily_figures",
]


#: On PostgreSQL, where a statement costs a round trip, the order and the application in
#: one: 9 statements, not 10.
NEW_PROSPECT_JOIN_POSTGRESQL = [
    "WITH new_order AS (INSERT INTO orders" if p == "INSERT INTO applications" else p
    for p in NEW_PROSPECT_JOIN
    if p != "INSERT INTO orders"
]


def test_a_new_prospects_join_form_reads_twice_and_writes_each_row_once(app, client, demo):
    """The join POST of the commonest case: the community and tier read in one statement,
    the submission key and the contact looked up in another, then one statement per row
    written (the order's and the application's together on PostgreSQL); nothing read
    again, nothing flushed apart."""
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    with statements(app) as seen:
        assert client.post("/join/demo/main", data=data).status_code == 302
    with app.app_context():
        postgresql = db.engine.dialect.name == "postgresql"
    expected = NEW_PROSPECT_JOIN_POSTGRESQL if postgresql else NEW_PROSPECT_JOIN
    assert [s for s in seen if not s.startswith(tuple(expected))] == []
    assert [next(p for p in expected if s.startswith(p)) for s in seen] == expected
    assert len(seen) == (9 if postgresql else 10)


def test_a_join_form_signs_a_csrf_token_only_for_a_page_that_shows_it(
    app, client, demo, monkeypatch
):
    """The token a join form sends is checked, and a form answered with a redirect signs
    no new one; a form shown again (refused) carries a new token, which works."""
    signed = []
    real = flask_wtf.csrf.generate_csrf

    def signing(*args, **kwargs):
        signed.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(flask_wtf.csrf, "generate_csrf", signing)
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    assert len(signed) == 1  # the page shown
    assert client.post("/join/demo/main", data={**data, "csrf_token": "forged"}).status_code == 400
    assert client.post("/join/demo/main", data=data).status_code == 302
    assert len(signed) == 1
    refused = client.post("/join/demo/main", data={**data, "accept_rules": ""})
    assert refused.status_code == 422 and len(signed) == 2
    again = {**data, "csrf_token": hidden_value(refused.text, "csrf_token")}
    assert client.post("/join/demo/main", data=again).status_code == 302
