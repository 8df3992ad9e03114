"""Staff accounts (the admin team), their roles, passwords, second factor and sessions.

Roles follow a community's class committee: the owner (班长) assigns them. A role is held
in one community (:class:`StaffRole`): a person can be owner of one community and moderator
of another. The install's owners (``StaffUser.install_owner``) create communities and their
first owners and may act in every community. Every admin view declares the permission it
needs with :func:`requires` (held in at least one community); objects reached by id are
loaded with :func:`load_for`, which answers 404 when the object's community is not one the
person may act on, and lists are limited with :func:`visible_communities`. Passwords are
hashed with Werkzeug's scrypt. Login tries are counted with
:mod:`core.limits` per client and account, per client and in all, claimed before the
password is checked. A staff session carries the account's ``session_epoch``; logging out,
changing the password or the role and disabling the account bump it, which ends every
session of the account at its next request. A TOTP authenticator is optional.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta
from functools import cache, wraps

import click
import pyotp
import qrcode
import qrcode.image.svg
import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.orm.attributes import set_committed_value
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Optional

from core import audit
from core.audit import community_id_of
from core.clock import utcnow
from core.db import UTCDateTime, db, row_id
from core.forms import Form
from core.i18n import settle_locale_at_login
from core.limits import AttemptCounter, Limit, TooManyTries, claim, client_network
from core.security import new_token, same_secret, same_site_path

#: What each permission lets staff do.
PERMISSIONS = {
    "members.view": _l("See communities and members"),
    "community.manage": _l("Manage communities, tiers, groups"),
    "members.review": _l("Review applications"),
    "members.activity": _l("Mark members active"),
    "members.purge": _l("Purge members"),
    "members.removals": _l("Remove members from groups"),
    "members.manage": _l("Grant or end access by hand, export"),
    "payments.view": _l("See orders and payments"),
    "payments.refund": _l("Refund"),
    "finance.export": _l("Export revenue"),
    "perks.manage": _l("Manage perks, coupons, courses, offers"),
    "platform.tasks": _l("Retry failed platform calls"),
    "audit.view": _l("See the audit log"),
    "staff.manage": _l("Manage the team and roles"),
    # Held by the install's owners only, never through a role.
    "install.manage": _l("Create communities and their first owners"),
}

#: What a community's roles may grant: everything but the install's own permission.
COMMUNITY_PERMISSIONS = frozenset(PERMISSIONS) - {"install.manage"}

#: Roles, what they are called, and what they may do in the community they are held in.
ROLES: dict[str, tuple[str, frozenset[str]]] = {
    "owner": (_l("Owner"), COMMUNITY_PERMISSIONS),
    "admin": (
        _l("Admin"),
        COMMUNITY_PERMISSIONS - {"staff.manage", "payments.refund", "finance.export"},
    ),
    "finance": (
        _l("Finance"),
        frozenset(
            {"members.view", "payments.view", "payments.refund", "finance.export", "audit.view"}
        ),
    ),
    "moderator": (
        _l("Moderator"),
        frozenset({"members.view", "members.review", "members.activity", "members.removals"}),
    ),
}


#: Password length (ASVS 5.0 L2: at least 8, at least 64 allowed, no composition rules).
PASSWORD_MIN, PASSWORD_MAX = 8, 128

LOGIN_WINDOW = timedelta(minutes=15)
#: Tries from one client at one account: a stranger elsewhere does not lock the owner out.
LOGINS_PER_CLIENT_AND_ACCOUNT = Limit("staff-login:client-account", 5, LOGIN_WINDOW)
#: Tries from one client over all accounts.
LOGINS_PER_CLIENT = Limit("staff-login:client", 30, LOGIN_WINDOW)
#: Tries in all, claimed only by tries within the two limits above, so that one client
#: cannot use them up alone.
LOGINS_IN_ALL = Limit("staff-login:all", 300, LOGIN_WINDOW)
#: Password checks of a logged-in member of staff (changing the password, turning off
#: the second factor): a stolen session cannot guess its way to the password.
PASSWORD_CONFIRMATIONS = Limit("staff-password-check", 5, LOGIN_WINDOW)

TOTP_ISSUER = "Qunmen"
#: Time steps of clock drift accepted either side of the current one.
TOTP_DRIFT_STEPS = 1

TOO_MANY_TRIES = _l("Too many tries: wait 15 minutes")
WRONG_LOGIN = _l("Wrong e-mail or password, or a wrong code")

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = _l("Please log in")


class StaffUser(UserMixin, db.Model):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: An owner of the install: creates communities and their first owners, and may act
    #: in every community.
    install_owner: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Carried in every session of the account; bumping it ends them all.
    session_epoch: Mapped[int] = mapped_column(default=1, server_default="1")
    #: Set on passwords someone else chose (a new account, a reset): the admin pages wait
    #: until the member of staff chooses their own.
    must_change_password: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: Base32 TOTP secret, set when enrolment starts; in force once ``totp_enabled_at``.
    totp_secret: Mapped[str | None] = mapped_column(sa.String(32))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The time step of the last code accepted; a code of it or before is refused.
    totp_last_step: Mapped[int | None]
    #: The language they chose with the switch; their logins start in it.
    locale: Mapped[str | None] = mapped_column(sa.String(10))

    roles: Mapped[list[StaffRole]] = relationship(
        back_populates="user", order_by="StaffRole.community_id", cascade="all, delete-orphan"
    )

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        """What the session holds: the account and its session epoch."""
        return f"{self.id}:{self.session_epoch}"

    @property
    def actor(self) -> str:
        """How this user appears in the audit log."""
        return f"staff:{self.id}"

    def can(self, permission: str, community=None) -> bool:
        """Whether this person may do ``permission`` in ``community`` (a community or its
        id), or, without one, in at least one community. Install owners may do anything."""
        if self.install_owner:
            return True
        if community is None:
            return any(permission in role.permissions for role in self.roles)
        community_id = getattr(community, "id", community)
        return any(
            permission in role.permissions
            for role in self.roles
            if role.community_id == community_id
        )

    def community_ids(self, permission: str) -> set[int] | None:
        """The communities in which this person may do ``permission``; None for an
        install owner (every community)."""
        if self.install_owner:
            return None
        return {role.community_id for role in self.roles if permission in role.permissions}

    def can_everywhere(self, permission: str) -> bool:
        """Whether this person may do ``permission`` in every community: what an action on
        something the install's communities share needs (its WeCom corporation, a
        statement of its one merchant account)."""
        allowed = self.community_ids(permission)
        if allowed is None:
            return True
        communities = sa.table("communities", sa.column("id"))
        return allowed >= set(db.session.scalars(sa.select(communities.c.id)))

    def role_in(self, community_id: int) -> StaffRole | None:
        return next((r for r in self.roles if r.community_id == community_id), None)

    @property
    def role_label(self) -> str:
        """What the page header calls this person's standing."""
        if self.install_owner:
            return _("Install owner")
        labels = {str(ROLES[role.role][0]) for role in self.roles if role.role in ROLES}
        return " / ".join(sorted(labels))

    @property
    def uses_totp(self) -> bool:
        return self.totp_enabled_at is not None

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class StaffRole(db.Model):
    """One person's role in one community."""

    __tablename__ = "staff_roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_user_id: Mapped[int] = mapped_column(
        sa.ForeignKey("staff_users.id", ondelete="CASCADE"), index=True
    )
    community_id: Mapped[int] = mapped_column(
        sa.ForeignKey("communities.id", ondelete="CASCADE"), index=True
    )
    #: A key of :data:`ROLES`.
    role: Mapped[str] = mapped_column(sa.String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    user: Mapped[StaffUser] = relationship(back_populates="roles")

    __table_args__ = (sa.UniqueConstraint("staff_user_id", "community_id"),)

    @property
    def permissions(self) -> frozenset[str]:
        return ROLES.get(self.role, ("", frozenset()))[1]

    @property
    def label(self) -> str:
        return ROLES.get(self.role, (self.role,))[0]


@login_manager.user_loader
def _load_user(session_id: str) -> StaffUser | None:
    """Called by Flask-Login on every request with a session: the account, if it is
    still active and the session's epoch is still its own."""
    user_id, _, epoch = session_id.partition(":")
    if not (user_id.isdigit() and epoch.isdigit()):
        return None
    user = db.session.get(StaffUser, int(user_id))
    if user is None or not user.active or user.session_epoch != int(epoch):
        return None
    return user


def requires(permission: str):
    """Mark an admin view as needing ``permission`` in at least one community; staff
    without it anywhere get a 403. Which community's objects they may reach is checked
    where the view loads them (:func:`load_for`, :func:`visible_communities`)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            if not current_user.is_authenticated or not current_user.can(permission):
                abort(403)
            return view(*args, **kwargs)

        checked.required_permission = permission
        return checked

    return decorate


def may_act_on(obj, permission: str) -> bool:
    """Whether the logged-in person may do ``permission`` on ``obj``: in its community,
    or, for an object of no community, as an install owner."""
    community_id = community_id_of(obj)
    if community_id is None:
        return current_user.install_owner
    return current_user.can(permission, community_id)


def load_for(model, object_id, permission: str):
    """Called by admin views to load the object an URL or a form names: the object, or a
    404 when there is none or its community is not one the person may act on with
    ``permission`` (a 404, not a 403: ids of other communities are not confirmed)."""
    obj = db.session.get(model, object_id) if object_id is not None else None
    if obj is None or not may_act_on(obj, permission):
        abort(404)
    return obj


#: Where the session keeps the community picked for the admin lists.
PICKED_COMMUNITY = "admin_community"


def visible_communities(permission: str) -> set[int] | None:
    """Called by admin lists that span communities: the ids of the communities whose rows
    they may show (those where the person may do ``permission``, narrowed to the one
    picked with ``?community=``), or None for every community (an install owner who
    picked none)."""
    allowed = current_user.community_ids(permission)
    picked = session.get(PICKED_COMMUNITY)
    if picked is None:
        return allowed
    return {picked} if allowed is None else allowed & {picked}


def in_visible_communities(column, permission: str) -> sa.ColumnElement[bool]:
    """A WHERE clause keeping the rows whose community ``column`` is visible."""
    visible = visible_communities(permission)
    return sa.true() if visible is None else column.in_(sorted(visible))


def check_password_rules(password: str) -> None:
    """Raise ValueError when ``password`` may not be chosen (only its length counts)."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValueError(f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters")


def create_staff_user(
    email: str,
    name: str,
    password: str,
    *,
    actor: str,
    role: str = "owner",
    community_id: int | None = None,
    must_change_password: bool = False,
    now: datetime | None = None,
) -> StaffUser:
    """Create an active staff account (flushed); with ``must_change_password`` its owner
    chooses a password of their own at first login. With ``community_id`` the account
    holds ``role`` there; without, it holds ``role`` in every community of the install
    and an owner also owns the install (how the install's operator makes the first
    account, from the CLI). Raises ValueError if the e-mail is taken, the role unknown or
    the password too short or too long."""
    email = email.strip().lower()
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    check_password_rules(password)
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == email)):
        raise ValueError(f"a staff account with e-mail {email} exists already")
    now = now or utcnow()
    user = StaffUser(
        email=email,
        name=name,
        install_owner=community_id is None and role == "owner",
        created_at=now,
        password_hash=generate_password_hash(password),
        session_epoch=1,
        must_change_password=must_change_password,
    )
    db.session.add(user)
    audit.record(
        "staff.created",
        user,
        actor=actor,
        data={
            "email": email,
            "install_owner": user.install_owner,
            "must_change_password": must_change_password,
        },
        now=now,
    )
    communities = sa.table("communities", sa.column("id"))
    everywhere = db.session.scalars(sa.select(communities.c.id)).all()
    for each in [community_id] if community_id is not None else everywhere:
        set_role(user, each, role, actor=actor, now=now)
    return user


def set_role(
    user: StaffUser, community_id: int, role: str | None, *, actor: str, now: datetime
) -> bool:
    """Called when an owner gives someone a role in a community, changes it or takes it
    away (``role`` None): changes the account's roles (flushed), ends its sessions when a
    role changes or goes, and audits it on the account and the community. False (nothing
    changes) when the account holds that role there already."""
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    held = user.role_in(community_id)
    before = held.role if held else None
    if before == role:
        return False
    if held is None:
        user.roles.append(StaffRole(community_id=community_id, role=role, created_at=now))
    elif role is None:
        user.roles.remove(held)
        end_sessions(user)
    else:
        held.role = role
        end_sessions(user)
    db.session.flush()
    audit.record(
        "staff.role_changed",
        user,
        actor=actor,
        data={"community": community_id, "from": before, "to": role},
        community_id=community_id,
        now=now,
    )
    return True


def set_install_owner(user: StaffUser, install_owner: bool, *, actor: str, now: datetime) -> None:
    """Called when an install owner makes someone an install owner or stops them being
    one: ends the account's sessions and audits it."""
    if user.install_owner == install_owner:
        return
    user.install_owner = install_owner
    end_sessions(user)
    audit.record(
        "staff.install_owner_changed", user, actor=actor, data={"to": install_owner}, now=now
    )


def staff_who_can(permission: str, community_id: int) -> sa.Select:
    """The active accounts that may do ``permission`` in the community (its staff with a
    role granting it, and the install's owners): a SELECT of (id, e-mail)."""
    roles = [role for role, (_label, allowed) in ROLES.items() if permission in allowed]
    holds = sa.select(StaffRole.staff_user_id).where(
        StaffRole.community_id == community_id, StaffRole.role.in_(roles)
    )
    return (
        sa.select(StaffUser.id, StaffUser.email)
        .where(StaffUser.active, sa.or_(StaffUser.install_owner, StaffUser.id.in_(holds)))
        .order_by(StaffUser.id)
    )


def end_sessions(user: StaffUser) -> None:
    """Called when the account logs out, changes its password or role, or is disabled:
    every session of it stops working at its next request."""
    user.session_epoch += 1


def set_own_password(user: StaffUser, password: str, *, now: datetime) -> None:
    """Called when a member of staff chooses their own password: sets it, ends their
    sessions (the caller logs the current one in again) and audits it. Raises ValueError
    if the password breaks the rules."""
    check_password_rules(password)
    user.password_hash = generate_password_hash(password)
    user.must_change_password = False
    end_sessions(user)
    audit.record("staff.password_changed", user, actor=user.actor, now=now)


def reset_password(user: StaffUser, *, actor: str, now: datetime) -> str:
    """Called when an owner resets someone's password (forgotten, or the authenticator
    lost): sets a temporary password that must be changed at the next login, turns the
    second factor off, ends the account's sessions and audits it. Returns the temporary
    password, to be shown once."""
    temporary = new_token(12)
    user.password_hash = generate_password_hash(temporary)
    user.must_change_password = True
    had_totp = user.totp_secret is not None
    user.totp_secret = user.totp_enabled_at = user.totp_last_step = None
    end_sessions(user)
    audit.record(
        "staff.password_reset", user, actor=actor, data={"totp_removed": had_totp}, now=now
    )
    return temporary


def start_totp_enrolment(user: StaffUser, *, now: datetime) -> str:
    """Called when a member of staff without a second factor asks for one: gives the
    account a new secret, not yet in force, and returns its ``otpauth://`` URI (to be shown
    once, as a QR code and as text)."""
    if user.uses_totp:
        raise ValueError("the second factor is on already")
    user.totp_secret = pyotp.random_base32()
    user.totp_last_step = None
    audit.record("staff.totp_enrolment_started", user, actor=user.actor, now=now)
    return pyotp.TOTP(user.totp_secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)


def accept_totp_code(user: StaffUser, code: str, *, now: datetime) -> bool:
    """Called at login and when enrolment is confirmed: whether ``code`` is a code of the
    account's secret for ``now`` (one step of drift either way) that was not accepted
    before. Accepting records the code's time step with one conditional UPDATE (flushed),
    so a code is accepted once, also by requests in parallel."""
    code = "".join(code.split())
    if user.totp_secret is None or not (len(code) == 6 and code.isdigit()):
        return False
    totp = pyotp.TOTP(user.totp_secret)
    current = totp.timecode(now)
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if same_secret(totp.generate_otp(step), code):
            fresh = sa.or_(StaffUser.totp_last_step.is_(None), StaffUser.totp_last_step < step)
            accepted = db.session.execute(
                sa.update(StaffUser)
                .where(StaffUser.id == user.id, fresh)
                .values(totp_last_step=step)
                .execution_options(synchronize_session=False)
            )
            if accepted.rowcount == 1:
                set_committed_value(user, "totp_last_step", step)
                return True
            return False
    return False


def enable_totp(user: StaffUser, code: str, *, now: datetime) -> bool:
    """Called when a member of staff confirms enrolment with a code from their app: puts
    the second factor in force and audits it. False (nothing changes) if the code is
    wrong."""
    if user.uses_totp or not accept_totp_code(user, code, now=now):
        return False
    user.totp_enabled_at = now
    audit.record("staff.totp_enabled", user, actor=user.actor, now=now)
    return True


def disable_totp(user: StaffUser, *, now: datetime) -> None:
    """Called when a member of staff turns their second factor off: forgets the secret
    and audits it."""
    user.totp_secret = user.totp_enabled_at = user.totp_last_step = None
    audit.record("staff.totp_disabled", user, actor=user.actor, now=now)


def totp_qr_code(uri: str) -> str:
    """The enrolment URI as a QR code, an SVG ``data:`` URL for an ``<img>``."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=10)
    return "data:image/svg+xml;base64," + base64.b64encode(image.to_string()).decode()


@cache
def _stand_in_hash() -> str:
    """A hash no password matches, checked when no account has the e-mail typed, so that
    unknown and known e-mails take as long."""
    return generate_password_hash(new_token())


def _login_limits(email: str) -> tuple[list[tuple[Limit, str]], list[tuple[Limit, str]]]:
    """The limits a login try claims: first those of its client, then the one of all
    tries. The e-mail is hashed: typed e-mails are not stored."""
    client = client_network()
    account = hashlib.sha256(email.encode()).hexdigest()[:32]
    own = [(LOGINS_PER_CLIENT_AND_ACCOUNT, f"{client}:{account}"), (LOGINS_PER_CLIENT, client)]
    return own, [(LOGINS_IN_ALL, "all")]


def _claim_login_try(email: str, user: StaffUser | None, *, now: datetime) -> bool:
    """Called by the login view before it checks anything: claims one try under each
    login limit and commits the claim. False if a limit is reached; the first refusal of
    each limit in its window is audited as a lockout."""
    own, shared = _login_limits(email)
    try:
        claim(own, now=now)
        claim(shared, now=now)
    except TooManyTries as refused:
        db.session.commit()
        subject = dict(own + shared)[refused.limit]
        counter = db.session.get(AttemptCounter, f"{refused.limit.name}:{subject}")
        if counter is not None and counter.count == refused.limit.tries + 1:
            _record_login_event("staff.login_limited", user, {"limit": refused.limit.name}, now)
            db.session.commit()
        return False
    db.session.commit()
    return True


def _record_login_event(
    action: str, user: StaffUser | None, data: dict[str, str], now: datetime
) -> None:
    """Audit a refused login: on the account tried if there is one (with its e-mail),
    else on no account in particular (the e-mail typed is not kept)."""
    if user is not None:
        data = {**data, "email": user.email}
    # A transient StaffUser stands for "no account": the entry's target_id stays empty.
    audit.record(action, user or StaffUser(), actor="system", data=data, now=now)


def _credentials_hold(user: StaffUser | None, password: str, code: str, now: datetime) -> bool:
    """Whether ``password`` (and the TOTP code, when the account uses one) let ``user``
    in. A password is checked even when there is no such account or it is disabled."""
    password_ok = check_password_hash(user.password_hash if user else _stand_in_hash(), password)
    if user is None or not user.active or not password_ok:
        return False
    return not user.uses_totp or accept_totp_code(user, code, now=now)


def _confirm_password(user: StaffUser, password: str, *, now: datetime) -> str | None:
    """Called before a logged-in member of staff changes their credentials: claims a try
    (committed), then checks their password. None if it is right, else the message."""
    try:
        claim([(PASSWORD_CONFIRMATIONS, str(user.id))], now=now)
    except TooManyTries:
        db.session.commit()
        return TOO_MANY_TRIES
    db.session.commit()
    if not user.check_password(password):
        return _("Wrong password")
    return None


bp = Blueprint("auth", __name__, cli_group=None)


def keep_locale_choice(locale: str) -> None:
    """The language switch, used by a logged-in member of staff: their logins start in it."""
    if current_user.is_authenticated:
        db.session.get(StaffUser, current_user.id).locale = locale


class LoginForm(Form):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    code = StringField(
        _l("Authenticator code (when two-step login is on)"),
        validators=[Optional(), Length(max=12)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class NewPasswordMixin:
    password = PasswordField(
        _l("New password (%(min)s–%(max)s characters)", min=PASSWORD_MIN, max=PASSWORD_MAX),
        validators=[DataRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        _l("Again"),
        validators=[
            DataRequired(),
            EqualTo("password", message=_l("The two do not match")),
        ],
        render_kw={"autocomplete": "new-password"},
    )


class ChangePasswordForm(NewPasswordMixin, Form):
    current = PasswordField(
        _l("Current password"),
        validators=[DataRequired(), Length(max=PASSWORD_MAX)],
        render_kw={"autocomplete": "current-password"},
    )


class EnableTotpForm(Form):
    code = StringField(
        _l("Code from the app"),
        validators=[DataRequired(), Length(max=12)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class DisableTotpForm(Form):
    current = PasswordField(
        _l("Current password"),
        validators=[DataRequired(), Length(max=PASSWORD_MAX)],
        render_kw={"autocomplete": "current-password"},
    )


@bp.route("/admin/login", methods=["GET", "POST"])
def login():
    """Staff log in with e-mail, password and, once they turned it on, a TOTP code. Each
    try is claimed and committed first; then a success is audited and starts a session,
    a failure is audited."""
    form = LoginForm()
    if form.validate_on_submit():
        now = utcnow()
        email = form.email.data.strip().lower()
        user = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == email))
        if not _claim_login_try(email, user, now=now):
            flash(str(TOO_MANY_TRIES), "error")
            return render_template("auth/login.html", form=form)
        # The claim's commit expired ``user``: what is checked below is read afresh.
        if _credentials_hold(user, form.password.data, form.code.data or "", now):
            audit.record("staff.logged_in", user, actor=user.actor, now=now)
            settle_locale_at_login(user)
            db.session.commit()
            login_user(user)
            if not user.uses_totp and (
                user.install_owner or any(r.role in ("owner", "finance") for r in user.roles)
            ):
                flash(
                    _("Consider turning on two-step login (Two-step, at the top)"),
                    "ok",
                )
            target = same_site_path(request.args.get("next"))
            return redirect(target or url_for("membership_admin.dashboard"))
        _record_login_event("staff.login_failed", user, {}, now)
        db.session.commit()
        flash(str(WRONG_LOGIN), "error")
    return render_template("auth/login.html", form=form)


@bp.route("/admin/logout", methods=["POST"])
@login_required
def logout():
    """Log out: ends every session of the account, copies of this one included."""
    user = db.session.get(StaffUser, current_user.id)
    end_sessions(user)
    audit.record("staff.logged_out", user, actor=user.actor)
    db.session.commit()
    logout_user()
    return redirect(url_for("auth.login"))


#: What a member of staff who must choose a password may still open.
_BEFORE_A_NEW_PASSWORD = {"auth.login", "auth.logout", "auth.change_password", "static"}


@bp.before_app_request
def _new_password_first():
    """Every admin page waits until a member of staff with a password chosen by someone
    else has chosen their own."""
    if (
        request.path.startswith("/admin")
        and request.endpoint not in _BEFORE_A_NEW_PASSWORD
        and current_user.is_authenticated
        and current_user.must_change_password
    ):
        flash(_("Choose your own password first"), "error")
        return redirect(url_for("auth.change_password"))
    return None


@bp.before_app_request
def _pick_community():
    """``?community=<id>`` on an admin page picks the community the lists show, kept in
    the session (``?community=`` alone shows all again). A community the person holds no
    role in is ignored."""
    if not (request.path.startswith("/admin") and "community" in request.args):
        return
    if not current_user.is_authenticated:
        return
    picked = request.args.get("community", type=row_id)
    if picked is None:
        session.pop(PICKED_COMMUNITY, None)
    elif current_user.install_owner or current_user.role_in(picked) is not None:
        session[PICKED_COMMUNITY] = picked


@bp.app_context_processor
def _community_picker() -> dict:
    """The admin header's community picker: the communities the logged-in person holds a
    role in (every community for an install owner), and the one picked."""
    if not (current_user and current_user.is_authenticated and request.path.startswith("/admin")):
        return {}
    communities = sa.table("communities", sa.column("id"), sa.column("name"))
    query = sa.select(communities.c.id, communities.c.name).order_by(communities.c.id)
    if not current_user.install_owner:
        query = query.where(communities.c.id.in_([r.community_id for r in current_user.roles]))
    return {
        "staff_communities": db.session.execute(query).all(),
        "picked_community": session.get(PICKED_COMMUNITY),
    }


@bp.route("/admin/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    """A member of staff changes their own password; their other sessions end."""
    form = ChangePasswordForm()
    user = db.session.get(StaffUser, current_user.id)
    if form.validate_on_submit():
        now = utcnow()
        error = _confirm_password(user, form.current.data, now=now)
        if error:
            form.current.errors.append(error)
        else:
            set_own_password(user, form.password.data, now=now)
            db.session.commit()
            login_user(user)  # this session carries the new epoch; the others end
            flash(_("Password changed"), "ok")
            return redirect(url_for("membership_admin.dashboard"))
    return render_template("auth/password.html", form=form, forced=user.must_change_password)


@bp.route("/admin/account/two-step", methods=["GET", "POST"])
@login_required
def two_step():
    """A member of staff turns the TOTP second factor on (start: the secret is shown once;
    confirm with a code from the app) or off (with their password)."""
    user = db.session.get(StaffUser, current_user.id)
    enable_form, disable_form = EnableTotpForm(), DisableTotpForm()
    action = request.form.get("action")
    now = utcnow()
    if request.method == "POST" and action == "start" and not user.uses_totp:
        uri = start_totp_enrolment(user, now=now)
        db.session.commit()
        page = render_template(
            "auth/two_step.html",
            user=user,
            enable_form=enable_form,
            disable_form=disable_form,
            uri=uri,
            qr_code=totp_qr_code(uri),
        )
        return page, 200, {"Cache-Control": "no-store"}
    if action == "confirm" and enable_form.validate_on_submit():
        if enable_totp(user, enable_form.code.data, now=now):
            db.session.commit()
            flash(_("Two-step login is on"), "ok")
            return redirect(url_for(".two_step"))
        db.session.commit()  # a code that matched is used up even if enrolment failed
        enable_form.code.errors.append(_("Wrong code"))
    elif action == "disable" and user.uses_totp and disable_form.validate_on_submit():
        error = _confirm_password(user, disable_form.current.data, now=now)
        if error:
            disable_form.current.errors.append(error)
        else:
            disable_totp(user, now=now)
            db.session.commit()
            flash(_("Two-step login is off"), "ok")
            return redirect(url_for(".two_step"))
    return render_template(
        "auth/two_step.html", user=user, enable_form=enable_form, disable_form=disable_form
    )


@bp.cli.command("create-admin")
@click.option("--email", prompt=True)
@click.option("--name", prompt=True)
@click.option("--role", default="owner", type=click.Choice(list(ROLES)), show_default=True)
@click.option(
    "--community",
    "slug",
    default=None,
    help="The community (its slug) the role is held in; without one, the role is held in "
    "every community and an owner also owns the install.",
)
@click.option(
    "--temporary",
    is_flag=True,
    help="The password is temporary: it must be changed at the first login.",
)
@click.password_option(envvar="ADMIN_PASSWORD", help="Prompted for unless ADMIN_PASSWORD is set.")
def create_admin_command(
    email: str, name: str, role: str, slug: str | None, temporary: bool, password: str
) -> None:
    """Create a staff account (the first one is the install's owner). Run by the install's
    operator, who may act on every community."""
    community_id = None
    if slug is not None:
        communities = sa.table("communities", sa.column("id"), sa.column("slug"))
        community_id = db.session.scalar(
            sa.select(communities.c.id).where(communities.c.slug == slug)
        )
        if community_id is None:
            raise click.ClickException(f"no community {slug!r}")
    try:
        create_staff_user(
            email,
            name,
            password,
            actor="cli",
            role=role,
            community_id=community_id,
            must_change_password=temporary,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    db.session.commit()
    click.echo(f"Created admin {email}.")
