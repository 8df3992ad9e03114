"""Updates from our Telegram bot (``POST /webhooks/telegram``): people asking to join a
group through an invitation's link. Verified by the secret token Telegram sends with
every update (set with ``setWebhook``); the platform call that lets them in is queued."""

from __future__ import annotations

import json

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, jsonify, request

from core import audit
from core.clock import utcnow
from core.db import db
from core.events import record_event
from core.security import csrf, same_secret
from membership.access import queue_platform_task
from membership.models import Invitation, InvitationStatus, TaskAction

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)

bp = Blueprint("telegram", __name__)


@bp.post("/webhooks/telegram")
@csrf.exempt
def updates():
    secret = current_app.config.get("TELEGRAM_WEBHOOK_SECRET")
    if not secret or not same_secret(request.headers.get(SECRET_HEADER, ""), secret):
        abort(403)
    try:
        update = json.loads(request.get_data(cache=False))
        if not isinstance(update, dict):
            raise TypeError("an update is a JSON object")
        join_request = update.get("chat_join_request")
        if not join_request:
            return jsonify({"ok": True})  # updates we do not act on
        link = join_request["invite_link"]["invite_link"]
        user_id = int(join_request["from"]["id"])
    except (ValueError, KeyError, TypeError):
        abort(400)
    invitation = db.session.scalar(sa.select(Invitation).where(Invitation.join_link == link))
    # The first person to ask through a valid invitation's link is let in; anyone else
    # (the link was passed on) is not, and their request waits for the group's admins.
    if invitation is not None and invitation.is_valid and invitation.telegram_user_id is None:
        now = utcnow()
        invitation.telegram_user_id = user_id
        invitation.status = InvitationStatus.JOINED
        audit.record(
            "invitation.joined", invitation, actor="telegram", data={"user_id": user_id}, now=now
        )
        record_event(
            invitation.member.community_id,
            "invitation.joined",
            {
                "invitation": invitation.id,
                "member": invitation.member_id,
                "group": invitation.group_id,
            },
            now=now,
        )
        queue_platform_task(invitation, TaskAction.ADMIT, now=now)
        db.session.commit()
    return jsonify({"ok": True})
