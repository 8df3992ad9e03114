"""The commonest join form, written by statements built once: a prospect who is nobody's
login yet, with no WeChat openid and no coupon, applying to a paid tier with no screening,
whose code step sends them a code.

:func:`membership.services.submit_application` does the same through the ORM, for every
case; its unit of work (two flushes: the order, to learn its id, then the application)
and the building of each statement cost more than the rest of the join form. Here the same
rows are written by prebuilt Core statements, in the order the ORM path writes them: the
open order at the tier's price (as :func:`payments.services.create_order` makes it), the
application waiting for its proof, their audit entries, the ``application.submitted``
event, and the join funnel's daily figures (an application, with an order) that the flush
hook of :mod:`membership.figures` would have tallied. On PostgreSQL, where a statement
costs a round trip, the order and the application are written by one statement.

The join view takes this path only for that case (see :func:`takes`); the tier was found
open by the view before. ``tests/test_join_fast_path.py`` sends the same forms both ways
(``JOIN_FAST_PATH`` on and off) and compares every row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import make_transient_to_detached

from core import audit
from core.db import db
from core.events import record_event
from core.security import new_token
from membership import figures
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Member,
    Tier,
    TierKind,
)
from membership.services import normalise_contact
from payments.models import Order, OrderStatus

_INSERT_ORDER = Order.__table__.insert()
_INSERT_APPLICATION = Application.__table__.insert()


@cache
def _order_and_application(order: tuple[str, ...], application: tuple[str, ...]) -> sa.Insert:
    """PostgreSQL: the order and the application written by one statement (a statement
    costs a round trip there; on SQLite each write is one of its own), the order's INSERT
    in a CTE whose id the application's takes; it answers both ids. Each value is bound
    by its table's name and its column's (``order_amount``, ``application_status``): no
    name of a column of either table, which SQLAlchemy would write as that column too.
    The columns are those ``order`` and ``application`` name, the keys of the values
    :func:`submit_fresh_application` gives (a Python default is not filled in within a
    CTE: none is left to one)."""
    orders, applications = Order.__table__, Application.__table__
    new_order = (
        orders.insert()
        .values({name: _bound("order", orders.c[name]) for name in order})
        .returning(orders.c.id)
        .cte("new_order")
    )
    return (
        applications.insert()
        .values(
            {name: _bound("application", applications.c[name]) for name in application}
            | {"order_id": sa.select(new_order.c.id).scalar_subquery()}
        )
        .returning(applications.c.order_id, applications.c.id)
        .add_cte(new_order)
    )


def _bound(table: str, column: sa.Column) -> sa.BindParameter:
    return sa.bindparam(f"{table}_{column.name}", type_=column.type)


#: An application with no attribute set, not even by a constructor (see :func:`_as_loaded`).
_NEW_APPLICATION = Application._sa_class_manager.new_instance


def takes(tier: Tier, member: Member | None, *, code_sent: bool, coupon: str | None) -> bool:
    """Whether a join form sent to ``tier`` is the case this module writes (see its
    docstring): no ``member`` logged in, a code to be sent (so no WeChat proof either), no
    ``coupon`` typed, a paid tier without screening, and the path switched on."""
    return (
        current_app.config["JOIN_FAST_PATH"]
        and member is None
        and code_sent
        and not coupon
        and tier.kind is TierKind.PAID
        and not tier.requires_screening
    )


def submit_fresh_application(
    tier: Tier,
    community: Community,
    *,
    display_name: str,
    contact_kind: ContactKind,
    contact_value: str,
    wechat_id: str | None,
    submission_key: str,
    now: datetime,
) -> Application:
    """Called by the join view for a form :func:`takes` accepts, whose submission key it
    found unused: write the application waiting for its proof and its open order (not
    flushed: there is nothing to flush; a form sent twice at once fails on the key's unique
    index, an ``IntegrityError`` the view answers). Returns the application, in the session
    as if it had been loaded."""
    connection = db.session.connection()
    contact_value = normalise_contact(contact_kind, contact_value)
    # Drawn in the order the ORM path draws them (the application's, then the order's).
    public_id, order_public_id = new_token(16), new_token(16)
    price = tier.price_money
    order = {
        "public_id": order_public_id,
        "amount": price.amount,
        "list_amount": price.amount,
        "community_id": community.id,
        "product": tier.name[:80],
        "member_id": None,
        "currency": price.currency,
        "description": f"{community.name} · {tier.name}"[:120],
        "status": OrderStatus.OPEN,
        "created_at": now,
        "expires_at": now + timedelta(minutes=current_app.config["ORDER_TTL_MINUTES"]),
    }
    values = {
        "public_id": public_id,
        "submission_key": submission_key,
        "community_id": community.id,
        "tier_id": tier.id,
        "display_name": display_name,
        "contact_kind": contact_kind,
        "contact_value": contact_value,
        "wechat_id": wechat_id or None,
        "contact_proven_at": None,
        "wechat_openid": None,
        "rules_accepted_at": now,
        "status": ApplicationStatus.AWAITING_PROOF,
        "member_id": None,
        "created_at": now,
        "answers": {},
        "reviewed_at": None,
        "reviewed_by": None,
        "review_reason": None,
        "renews_membership_id": None,
        "pay_token": None,
        "pay_link_expires_at": None,
        "status_login_at": None,
    }
    if connection.dialect.name == "postgresql":
        both = {f"order_{name}": value for name, value in order.items()}
        both.update({f"application_{name}": value for name, value in values.items()})
        written = _order_and_application(tuple(order), tuple(values))
        order_id, application_id = connection.execute(written, both).one()
        values["order_id"] = order_id
    else:
        order_id = connection.execute(_INSERT_ORDER, order).inserted_primary_key[0]
        values["order_id"] = order_id
        application_id = connection.execute(_INSERT_APPLICATION, values).inserted_primary_key[0]
    audit.record_row(
        "order.created",
        "orders",
        order_id,
        actor="prospect",
        community_id=community.id,
        data={"amount": price.iso_str()},
        now=now,
    )
    audit.record_row(
        "application.submitted",
        "applications",
        application_id,
        actor="prospect",
        community_id=community.id,
        data={"tier": tier.code},
        now=now,
    )
    record_event(
        community.id,
        "application.submitted",
        {"application": public_id, "tier": tier.code},
        now=now,
    )
    figures.count_application(db.session(), community.id, made_at=now)
    return _as_loaded(application_id, values, community, tier)


def _as_loaded(application_id: int, values: dict, community: Community, tier: Tier) -> Application:
    """The application whose row was just written with ``values``, in the session as a
    loaded one is (nothing for a flush to write), with its community and tier: its
    attributes are set as a query's loading sets them, straight into the instance's
    dictionary, with none of the change tracking of a constructor's (which cost as much
    as writing the row)."""
    application = _NEW_APPLICATION()
    application.__dict__.update(
        values, id=application_id, community=community, tier=tier, member=None
    )
    make_transient_to_detached(application)
    db.session.add(application)
    return application
