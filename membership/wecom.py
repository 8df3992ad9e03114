"""WeCom customer groups (企业微信客户群): the one API-driven way to run groups WeChat users
join, and so the one where we can verify who joined.

Each invitation to a WeCom group gets a join way (「加入群聊」, scene 2: a QR code) of its
own, whose ``state`` names the invitation. WeCom tells us a group changed
(``POST /webhooks/wecom``, signed and AES-encrypted with the callback token and
EncodingAESKey); the worker then reads the group's members (``groupchat/get``), each with
the ``state`` of the join way they came by: that credits the invitation (JOINED, with the
person's external userid), records who left (and ticks the removal task waiting for
them), adopts a group WeCom opened when the join way's groups were full, and leaves
everyone else listed as a freeloader. WeCom cannot remove an external member by API: an
ended membership still makes a removal task for the group's owner. A reconciliation lists
every group and reads each, repairing what callbacks missed.

Every call to WeCom goes through the platform-task queue (:mod:`membership.access`), with
no transaction open.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import xmltodict
from flask import Blueprint, Response, abort, current_app, request
from flask_babel import lazy_gettext as _l
from sqlalchemy.exc import IntegrityError, OperationalError
from wechatpy.enterprise import WeChatClient
from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.exceptions import WeChatException

from core import audit
from core.clock import utcnow
from core.db import db, end_transaction_keeping_objects, row_ids
from core.limits import client_network
from core.security import csrf
from membership.access import queue_group_task
from membership.models import (
    LIVE_INVITATION_STATUSES,
    Group,
    Invitation,
    InvitationStatus,
    PlatformTask,
    RemovalTask,
    TaskAction,
    TaskStatus,
    WeComGroupMember,
    tier_groups,
)
from membership.platforms import ADAPTERS, PLATFORMS, ModeratedQrAdapter, PlatformError
from payments import inbox
from payments.models import InboxStatus, WebhookEvent
from payments.providers import InvalidNotification
from payments.providers.wechatpay import parse_xml
from payments.views import MAX_NOTIFICATION_BYTES

log = logging.getLogger(__name__)

PLATFORM = "wecom"
#: A join way's ``state`` (at most 30 characters) names the invitation it was made for.
STATE_PREFIX = "qm-inv-"
#: WeCom takes at most this many groups in one join way's ``chat_id_list``.
JOIN_WAY_GROUPS = 5
#: WeCom's member types in ``groupchat/get``.
STAFF, EXTERNAL = 1, 2
#: Who the audit log says made changes read from WeCom.
ACTOR = "wecom"

bp = Blueprint("wecom", __name__)


def invitation_state(invitation: Invitation) -> str:
    return f"{STATE_PREFIX}{invitation.id}"


def invitation_id_of(state: str | None) -> int | None:
    """The invitation a join way's ``state`` names, or None for a state not ours."""
    if not state or not state.startswith(STATE_PREFIX):
        return None
    return next(iter(row_ids([state.removeprefix(STATE_PREFIX)])), None)


class WeComClient(WeChatClient):
    """wechatpy's WeCom client, with its token call at the configured API address too
    (wechatpy hard-codes qyapi.weixin.qq.com there)."""

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=self.API_BASE_URL + "gettoken",
            params={"corpid": self.corp_id, "corpsecret": self.secret},
        )


def wecom_client() -> WeComClient:
    """One client per app, so its access token is fetched once and reused until it ends."""
    extensions = current_app.extensions
    if "qunmen.wecom_client" not in extensions:
        config = current_app.config
        client = WeComClient(config["WECOM_CORP_ID"], config["WECOM_SECRET"], timeout=10)
        if config.get("WECOM_API_BASE"):
            client.API_BASE_URL = config["WECOM_API_BASE"].rstrip("/") + "/cgi-bin/"
        extensions["qunmen.wecom_client"] = client
    return extensions["qunmen.wecom_client"]


def _call(what: str, function, *args, **kwargs) -> dict[str, Any]:
    """One WeCom call; its refusals become :class:`PlatformError` (the worker retries)."""
    try:
        return function(*args, **kwargs)
    except WeChatException as error:
        raise PlatformError(f"WeCom {what}: {error.errcode} {error.errmsg}") from error


def list_chats() -> list[dict[str, Any]]:
    """Every customer group the app may manage: ``[{"chat_id", "status"}, …]``."""
    return _call("groupchat/list", wecom_client().external_contact_group_chat.list_all)


def chat_detail(chat_id: str) -> dict[str, Any]:
    """A group's name, owner and members (``need_name`` for their names, which wechatpy's
    ``get`` does not ask for)."""
    answer = _call(
        "groupchat/get",
        wecom_client().post,
        "externalcontact/groupchat/get",
        data={"chat_id": chat_id, "need_name": 1},
    )
    return answer["group_chat"]


def configured() -> bool:
    """Whether the WeCom API is configured (its adapter manages WeCom groups)."""
    return WeComAdapter.from_config(current_app.config) is not None


#: Most groups the admin's group form lists to choose from.
CHOICES = 100


def chat_choices() -> list[dict[str, str]]:
    """The customer groups WeCom lists, with their names and owners, for an admin to link
    a group to one (at most :data:`CHOICES`). Call with no transaction open."""
    return [
        {"chat_id": detail["chat_id"], "name": detail.get("name", ""), "owner": detail["owner"]}
        for detail in (chat_detail(chat["chat_id"]) for chat in list_chats()[:CHOICES])
    ]


def group_headcounts(group_ids: list[int]) -> dict[int, int]:
    """How many people WeCom lists in each group now (staff included), by group id."""
    rows = db.session.execute(
        sa.select(WeComGroupMember.group_id, sa.func.count())
        .where(WeComGroupMember.group_id.in_(group_ids), WeComGroupMember.left_at.is_(None))
        .group_by(WeComGroupMember.group_id)
    )
    return dict(rows.all())


class WeComAdapter(ModeratedQrAdapter):
    """WeCom customer groups: a join way per invitation on grant; on revoke the join way is
    deleted and, when the person is in the group, the owner gets a removal task (WeCom has
    no call that removes an external member). Needs ``WECOM_CORP_ID`` and
    ``WECOM_SECRET``."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WeComAdapter | None:
        return cls() if config.get("WECOM_CORP_ID") and config.get("WECOM_SECRET") else None

    def grant(self, invitation: Invitation, *, now: datetime) -> None:
        """Make the invitation's join way: its group first, then up to four more of the
        tier's WeCom groups, and a new group opened by WeCom when all are full."""
        group = invitation.group
        if not group.wecom_chat_id:  # not linked to its WeCom group yet: its QR image
            return super().grant(invitation, now=now)
        tier = invitation.membership.tier
        others = [g for g in tier.groups if g.wecom_chat_id and g.id != group.id]
        chats = [group.wecom_chat_id] + [g.wecom_chat_id for g in others]
        data = {
            "scene": 2,
            "remark": f"{group.community.name} #{invitation.id}"[:30],
            "auto_create_room": 1,
            "room_base_name": tier.name[:40],
            "room_base_id": len(chats) + 1,
            "chat_id_list": chats[:JOIN_WAY_GROUPS],
            "state": invitation_state(invitation),
        }
        end_transaction_keeping_objects()
        client = wecom_client()
        if invitation.wecom_config_id is None:
            invitation.wecom_config_id = _call(
                "add_join_way", client.post, "externalcontact/groupchat/add_join_way", data=data
            )["config_id"]
            # Kept at once: a retry after a failure below reads this join way, not a new one.
            end_transaction_keeping_objects()
        join_way = _call(
            "get_join_way",
            client.post,
            "externalcontact/groupchat/get_join_way",
            data={"config_id": invitation.wecom_config_id},
        )["join_way"]
        invitation.wecom_qr_url = join_way["qr_code"]

    def revoke(self, invitation: Invitation, *, now: datetime) -> None:
        """Delete the join way if it is still there; a removal task for the group's owner
        when the person who joined with it is still in the group."""
        in_group = invitation.wecom_user_id is not None and db.session.scalar(
            sa.select(WeComGroupMember.id).where(
                WeComGroupMember.group_id == invitation.group_id,
                WeComGroupMember.user_id == invitation.wecom_user_id,
                WeComGroupMember.left_at.is_(None),
            )
        )
        config_id = invitation.wecom_config_id
        end_transaction_keeping_objects()
        if config_id:
            delete_join_way(config_id)
            invitation.wecom_config_id = None
            invitation.wecom_qr_url = None
        if in_group:
            super().revoke(invitation, now=now)

    def sync_chat(self, chat_id: str, *, now: datetime) -> None:
        end_transaction_keeping_objects()
        detail = chat_detail(chat_id)
        try:
            group = db.session.scalar(
                sa.select(Group).where(Group.wecom_chat_id == chat_id).with_for_update()
            )
            if group is None:
                group = adopt_group(detail, now=now)
            if group is None:
                log.info("WeCom group %s is none of ours: ignored", chat_id)
                return
            apply_members(group, detail, now=now)
            db.session.commit()
        except IntegrityError as error:
            # Another worker adopted or recorded the same group meanwhile: read it again.
            db.session.rollback()
            raise PlatformError(f"WeCom group {chat_id} changed meanwhile") from error
        retire_used_join_ways(group)

    def reconcile(self, *, now: datetime) -> None:
        """Read every group WeCom lists, ours and any it opened for a full join way."""
        end_transaction_keeping_objects()
        failed = []
        for chat in list_chats():
            try:
                self.sync_chat(chat["chat_id"], now=now)
            except PlatformError as error:  # the others are read all the same
                db.session.rollback()
                failed.append(str(error))
            db.session.commit()  # each group's repairs stand on their own
        if failed:
            raise PlatformError(f"{len(failed)} groups not read: {'; '.join(failed)}"[:500])


ADAPTERS[PLATFORM] = WeComAdapter.from_config


def delete_join_way(config_id: str) -> None:
    """Delete a join way: once used or revoked it must let nobody else in (and the
    enterprise's quota of 500,000 is shared with 联系我)."""
    _call(
        "del_join_way",
        wecom_client().post,
        "externalcontact/groupchat/del_join_way",
        data={"config_id": config_id},
    )


def retire_used_join_ways(group: Group) -> None:
    """Delete the join ways of the group's invitations that were used: once someone joined
    with one, nobody else may. Commits what was read first, then each deletion."""
    used = db.session.scalars(
        sa.select(Invitation).where(
            Invitation.group_id == group.id,
            Invitation.wecom_user_id.is_not(None),
            Invitation.wecom_config_id.is_not(None),
        )
    ).all()
    for invitation in used:
        end_transaction_keeping_objects()
        delete_join_way(invitation.wecom_config_id)
        invitation.wecom_config_id = None
        invitation.wecom_qr_url = None
        db.session.commit()


def _when(seconds: Any) -> datetime | None:
    return datetime.fromtimestamp(int(seconds), UTC) if seconds else None


def adopt_group(detail: Mapping[str, Any], *, now: datetime) -> Group | None:
    """A group WeCom opened because a join way's groups were full (``auto_create_room``)
    joins the tier whose invitation brought its members; None when no member came by one
    of our join ways (a group that is none of ours)."""
    ours = [invitation_id_of(m.get("state")) for m in detail.get("member_list", [])]
    invitations = [db.session.get(Invitation, i) for i in ours if i is not None]
    invitation = next((i for i in invitations if i is not None and i.group is not None), None)
    if invitation is None:
        return None
    tier = invitation.membership.tier
    platform = PLATFORMS[PLATFORM]
    group = Group(
        community_id=tier.community_id,
        name=(detail.get("name") or tier.name)[:60],
        platform=PLATFORM,
        capacity=platform.max_members,
        wecom_chat_id=detail["chat_id"],
        wecom_owner=detail.get("owner"),
        created_at=now,
    )
    db.session.add(group)
    tier.groups.append(group)
    audit.record(
        "group.adopted", group, actor=ACTOR, data={"chat_id": group.wecom_chat_id}, now=now
    )
    return group


def apply_members(group: Group, detail: Mapping[str, Any], *, now: datetime) -> None:
    """Bring what we know of ``group``'s members in line with WeCom's list: newcomers are
    recorded and credited to the invitation they came by, people gone are marked left and
    their removal task ticked, the owner is kept. Flushed, not committed."""
    group.wecom_owner = detail.get("owner") or group.wecom_owner
    known = {
        row.user_id: row
        for row in db.session.scalars(
            sa.select(WeComGroupMember).where(WeComGroupMember.group_id == group.id)
        )
    }
    listed = {item["userid"]: item for item in detail.get("member_list", [])}
    for user_id, item in listed.items():
        row = known.get(user_id)
        if row is None or row.left_at is not None:
            row = row or WeComGroupMember(group=group, user_id=user_id, first_seen_at=now)
            row.left_at, row.invitation_id = None, None
            row.joined_at = _when(item.get("join_time"))
            row.join_scene = item.get("join_scene")
            row.invitor = (item.get("invitor") or {}).get("userid")
            row.state = (item.get("state") or None) and item["state"][:30]
            db.session.add(row)
        row.member_type = int(item.get("type") or EXTERNAL)
        row.name = (item.get("name") or None) and item["name"][:80]
        row.group_nickname = (item.get("group_nickname") or None) and item["group_nickname"][:80]
        if row.member_type == EXTERNAL and row.invitation_id is None:
            db.session.flush()
            _credit(group, row, now=now)
    for user_id, row in known.items():
        if user_id not in listed and row.left_at is None:
            row.left_at = now
            _left(group, row, now=now)
    db.session.flush()


def _credit(group: Group, row: WeComGroupMember, *, now: datetime) -> None:
    """Credit a member of ``group`` to the invitation that let them in: the live one
    already theirs (someone who came back), or the one their join way's state names, if
    it is live and for this group's tier. A join way passed on lets in more than one
    person before it is deleted: the first of them to join has it, whatever order WeCom
    reports them in. Anyone else stays uncredited: a freeloader."""
    invitation = db.session.scalar(
        sa.select(Invitation).where(
            Invitation.wecom_user_id == row.user_id,
            Invitation.status.in_(LIVE_INVITATION_STATUSES),
        )
    )
    invitation_id = invitation_id_of(row.state)
    if invitation is None and invitation_id is not None:
        # Locked: two groups of one join way may report people with its state at once.
        invitation = db.session.get(
            Invitation, invitation_id, with_for_update=True, populate_existing=True
        )
    if invitation is None or invitation.status not in LIVE_INVITATION_STATUSES:
        return
    in_tier = db.session.scalar(
        sa.select(tier_groups.c.group_id).where(
            tier_groups.c.tier_id == invitation.membership.tier_id,
            tier_groups.c.group_id == group.id,
        )
    )
    if in_tier is None:
        return
    if invitation.wecom_user_id not in (None, row.user_id):
        holder = db.session.scalar(
            sa.select(WeComGroupMember).where(WeComGroupMember.invitation_id == invitation.id)
        )
        if holder is not None and not _joined_before(row, holder):
            return
        if holder is not None:
            holder.invitation_id = None  # they came by it after this person did
    row.invitation_id = invitation.id
    if invitation.wecom_user_id != row.user_id:
        invitation.wecom_user_id = row.user_id
        invitation.status = InvitationStatus.JOINED
        invitation.group = group  # WeCom may have seated them in another of the join way's
        audit.record(
            "invitation.joined",
            invitation,
            actor=ACTOR,
            data={"user_id": row.user_id, "group": group.name},
            now=now,
        )


def _joined_before(row: WeComGroupMember, other: WeComGroupMember) -> bool:
    """Whether ``row``'s person joined strictly before ``other``'s (as WeCom dates them)."""
    return row.joined_at is not None and (
        other.joined_at is None or row.joined_at < other.joined_at
    )


def _left(group: Group, row: WeComGroupMember, *, now: datetime) -> None:
    """Someone left (or was removed from) ``group``: recorded, and the removal task
    waiting for them, if any, is done."""
    audit.record("wecom.member_left", group, actor=ACTOR, data={"user_id": row.user_id}, now=now)
    tasks = db.session.scalars(
        sa.select(RemovalTask)
        .join(Invitation, RemovalTask.invitation_id == Invitation.id)
        .where(
            RemovalTask.group_id == group.id,
            RemovalTask.done_at.is_(None),
            Invitation.wecom_user_id == row.user_id,
        )
    ).all()
    for task in tasks:
        task.done_at, task.done_by = now, ACTOR
        audit.record("removal.done", task, actor=ACTOR, now=now)


#: Why someone in a WeCom group is not covered by a valid invitation.
FREELOADER_REASONS = {
    "no_state": _l("Joined without an invitation"),
    "not_ours": _l("A join way that is not ours"),
    "revoked": _l("Their invitation was revoked or ended"),
    "someone_elses": _l("Came by someone else's invitation"),
}


def freeloaders(group: Group) -> list[tuple[WeComGroupMember, str]]:
    """The external members in ``group`` now whom no valid invitation covers, with why,
    in the order they joined."""
    rows = db.session.scalars(
        sa.select(WeComGroupMember)
        .outerjoin(Invitation, WeComGroupMember.invitation_id == Invitation.id)
        .where(
            WeComGroupMember.group_id == group.id,
            WeComGroupMember.left_at.is_(None),
            WeComGroupMember.member_type == EXTERNAL,
            sa.or_(
                WeComGroupMember.invitation_id.is_(None),
                Invitation.status.not_in(LIVE_INVITATION_STATUSES),
            ),
        )
        .order_by(WeComGroupMember.joined_at, WeComGroupMember.id)
    ).all()
    return [(row, FREELOADER_REASONS[_reason(row)]) for row in rows]


def _reason(row: WeComGroupMember) -> str:
    if not row.state:
        return "no_state"
    invitation_id = invitation_id_of(row.state)
    invitation = db.session.get(Invitation, invitation_id) if invitation_id else None
    if invitation is None:
        return "not_ours"
    if invitation.wecom_user_id not in (None, row.user_id):
        return "someone_elses"
    return "revoked"


def removal_details(tasks: list[RemovalTask]) -> dict[int, WeComGroupMember]:
    """For removal tasks of WeCom groups: who to remove, as the group shows them (group
    nickname, WeCom name), by task id."""
    found = {}
    for task in tasks:
        user_id = task.invitation.wecom_user_id
        if user_id:
            row = db.session.scalar(
                sa.select(WeComGroupMember).where(
                    WeComGroupMember.group_id == task.group_id,
                    WeComGroupMember.user_id == user_id,
                )
            )
            if row is not None:
                found[task.id] = row
    return found


def queue_reconciliation(*, actor: str, now: datetime) -> PlatformTask:
    """Queue a reading of every WeCom group (the schedule, or an admin). Flushed."""
    task = queue_group_task(TaskAction.RECONCILE, now=now)
    audit.record("wecom.reconcile_queued", task, actor=actor, now=now)


def reconciliation_pending() -> bool:
    """Whether a reconciliation is queued and not yet run (the schedule adds no second)."""
    return (
        db.session.scalar(
            sa.select(PlatformTask.id).where(
                PlatformTask.action == TaskAction.RECONCILE,
                PlatformTask.status == TaskStatus.PENDING,
            )
        )
        is not None
    )


def _crypto() -> WeChatCrypto | None:
    config = current_app.config
    if not (
        config.get("WECOM_CORP_ID")
        and config.get("WECOM_CALLBACK_TOKEN")
        and config.get("WECOM_ENCODING_AES_KEY")
    ):
        return None
    return WeChatCrypto(
        config["WECOM_CALLBACK_TOKEN"], config["WECOM_ENCODING_AES_KEY"], config["WECOM_CORP_ID"]
    )


#: The query parameters that sign a callback, in the order wechatpy takes them.
SIGNATURE_PARAMETERS = ("msg_signature", "timestamp", "nonce")
#: What a wrongly signed, wrongly encrypted or malformed callback can raise in wechatpy.
_UNREADABLE = (WeChatException, InvalidNotification, ValueError, KeyError, TypeError)


@bp.get("/webhooks/wecom")
def verify_url():
    """WeCom checks the callback URL when it is saved: the ``echostr`` it sends, once
    verified and decrypted, is the answer."""
    crypto = _crypto()
    if crypto is None:
        abort(404)
    signature = [request.args.get(name, "") for name in SIGNATURE_PARAMETERS]
    try:
        echo = crypto.check_signature(*signature, request.args.get("echostr", ""))
    except _UNREADABLE:
        abort(403)
    return Response(echo, mimetype="text/plain")


@bp.post("/webhooks/wecom")
@csrf.exempt
def callback():
    """A WeCom change callback: verified and decrypted before anything is stored (a forged
    one is refused like any webhook's, see :func:`payments.inbox.refuse`); a customer
    group's change is stored in the webhook inbox and its group read again by the worker."""
    crypto = _crypto()
    if crypto is None:
        abort(404)
    headers, client = dict(request.headers), client_network()
    signature = {name: request.args.get(name, "") for name in SIGNATURE_PARAMETERS}
    try:
        too_large = f"body over {MAX_NOTIFICATION_BYTES // 1024} KB"
        if (request.content_length or 0) > MAX_NOTIFICATION_BYTES:
            return _refused(inbox.refuse(PLATFORM, headers, too_large, client=client), 413)
        body = request.stream.read(MAX_NOTIFICATION_BYTES + 1)
        if len(body) > MAX_NOTIFICATION_BYTES:
            result = inbox.refuse(PLATFORM, headers, too_large, body=body, client=client)
            return _refused(result, 413)
        try:
            envelope = parse_xml(body, "xml")
            plain = crypto.decrypt_message(envelope, *signature.values())
            event = xmltodict.parse(plain, disable_entities=True)["xml"]
        except _UNREADABLE as error:
            detail = f"not a genuine WeCom callback: {type(error).__name__}"
            return _refused(inbox.refuse(PLATFORM, headers, detail, body=body, client=client))
        record_callback(event, body, signature, now=utcnow())
    except OperationalError:
        log.exception("WeCom callback not stored: database unreachable")
        db.session.rollback()
        return Response("database unavailable", status=503)
    return Response("", mimetype="text/plain")


def _refused(result: inbox.InboxResult, status: int | None = None) -> Response:
    return Response(result.message, status=status or result.http_status, mimetype="text/plain")


def record_callback(
    event: Mapping[str, Any], body: bytes, signature: Mapping[str, str], *, now: datetime
) -> InboxStatus:
    """Store a verified callback and act on it: a change of one of our customer groups
    queues a reading of its members (once per distinct event); one of a group we do not
    know is recorded and ignored, but a new group's first members are read once, in case
    WeCom opened it for one of our join ways. ``signature``: the query's ``msg_signature``,
    ``timestamp`` and ``nonce``, kept with the body (they are what verify it). Commits."""
    digest = hashlib.sha256(xmltodict.unparse({"xml": dict(event)}).encode()).hexdigest()
    stored = WebhookEvent(
        provider=PLATFORM,
        received_at=now,
        headers=dict(signature),
        body=body,
        event_id=digest,
        processed_at=now,
    )
    db.session.add(stored)
    chat_id = event.get("ChatId")
    if event.get("Event") != "change_external_chat" or not chat_id:
        stored.status, stored.detail = InboxStatus.IGNORED, "not a customer group change"
    elif db.session.scalar(
        sa.select(WebhookEvent.id).where(
            WebhookEvent.provider == PLATFORM,
            WebhookEvent.event_id == digest,
            WebhookEvent.id != stored.id,
            WebhookEvent.status.in_([InboxStatus.PROCESSED, InboxStatus.IGNORED]),
        )
    ):
        stored.status, stored.detail = InboxStatus.DUPLICATE, "delivered before"
    elif db.session.scalar(sa.select(Group.id).where(Group.wecom_chat_id == chat_id)):
        stored.status = InboxStatus.PROCESSED
        queue_group_task(TaskAction.SYNC, chat_id=chat_id, now=now)
    else:
        stored.status, stored.detail = InboxStatus.IGNORED, f"unknown group chat {chat_id}"
        if event.get("ChangeType") == "create" or event.get("UpdateDetail") == "add_member":
            queue_group_task(TaskAction.SYNC, chat_id=chat_id, now=now)
    db.session.commit()
    return stored.status
