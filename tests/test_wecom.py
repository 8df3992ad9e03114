"""WeCom customer groups: a join way per invitation, change callbacks verified and
decrypted with wechatpy's WeCom crypto, the group's members read through the queue from a
local fake WeCom API, invitations credited to the right person, freeloaders listed,
removals ticked by WeCom's own word, spill-over groups adopted, reconciliation."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa
from wechatpy.enterprise.crypto import PrpCrypto
from wechatpy.utils import WeChatSigner

from core.clock import utcnow
from core.db import db
from membership.access import drain
from membership.cli import seed_demo_community
from membership.lifecycle import end_by_hand
from membership.models import (
    Group,
    Invitation,
    InvitationStatus,
    Member,
    Membership,
    PlatformTask,
    RemovalTask,
    TaskAction,
    TaskStatus,
    Tier,
    WeComGroupMember,
)
from membership.wecom import freeloaders, invitation_state
from payments import inbox
from payments.models import InboxStatus, WebhookEvent
from payments.views import MAX_NOTIFICATION_BYTES
from tests import fake_apis
from tests.conftest import fresh_database
from tests.fake_apis import group_change, wecom_callback
from tests.helpers import (
    count,
    join_and_pay,
    open_payment,
    signed_notification,
    submit_form,
)
from tests.test_concurrency import _serve

CHATS = ["wrQunmenMainChat0001", "wrQunmenMainChat0002", "wrQunmenMainChat0003"]


def make_wecom_groups(apis: fake_apis.FakeAPIs, chats: list[str] = CHATS) -> list[int]:
    """The main tier's groups become WeCom customer groups, one per chat (app context
    needed; committed). Returns their ids."""
    tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
    groups = []
    for number, chat in enumerate(chats, 1):
        apis.wecom.add_group(chat, f"读书会企业微信{number}群")
        group = Group(
            community_id=tier.community_id,
            name=f"企业微信{number}群 · WeCom {number}",
            platform="wecom",
            capacity=500,
            wecom_chat_id=chat,
            created_at=utcnow(),
        )
        db.session.add(group)
        groups.append(group)
    tier.groups = groups
    db.session.commit()
    return [g.id for g in groups]


@pytest.fixture
def wecom_tier(app, demo, apis) -> list[int]:
    with app.app_context():
        return make_wecom_groups(apis)


def pay(app, person: int) -> int:
    """Person ``person`` pays for the main tier (a signed notification into the inbox);
    returns their invitation's id."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payment = open_payment(tier, "fake", person)
        db.session.commit()
        assert inbox.receive("fake", *signed_notification(payment)).status is InboxStatus.PROCESSED
        return db.session.scalar(sa.select(Invitation.id).order_by(Invitation.id.desc()))


def deliver(client, event: dict, **keys) -> int:
    body, query = wecom_callback(event, **keys)
    return client.post(
        "/webhooks/wecom", query_string=query, data=body, content_type="text/xml"
    ).status_code


def state_of(app, invitation_id: int) -> str:
    with app.app_context():
        return invitation_state(db.session.get(Invitation, invitation_id))


def invitation_row(app, invitation_id: int) -> tuple:
    with app.app_context():
        invitation = db.session.get(Invitation, invitation_id)
        return invitation.status, invitation.wecom_user_id, invitation.group_id


def join_way_calls(apis, name: str) -> list[dict]:
    return [r.data for r in apis.requests if r.path.endswith(f"/groupchat/{name}")]


def test_each_invitation_gets_its_own_join_way_after_the_commit(app, wecom_tier, apis):
    browser = app.test_client()
    status = join_and_pay(browser, "main")
    assert join_way_calls(apis, "add_join_way") == []  # nothing called in the payment
    assert "正在生成你的专属入群二维码" in browser.get(status).text
    with app.app_context():
        assert drain() == 1
        invitation = db.session.scalars(sa.select(Invitation)).one()
        state, config_id = invitation_state(invitation), invitation.wecom_config_id
        assert invitation.group_id == wecom_tier[0]
    [call] = join_way_calls(apis, "add_join_way")
    assert call["scene"] == 2
    assert call["chat_id_list"] == CHATS  # its own group first, then the tier's others
    assert (call["auto_create_room"], call["room_base_id"]) == (1, 4)
    assert call["state"] == state and len(state) <= 30
    qr = f"https://wework.qpic.cn/wwpic/fake/{config_id}"
    page = browser.get(status)
    assert qr in page.text
    assert "https://wework.qpic.cn" in page.headers["Content-Security-Policy"]


def test_a_join_is_credited_to_its_invitation_and_its_join_way_deleted(app, wecom_tier, apis):
    mine, other = pay(app, 1), pay(app, 2)
    with app.app_context():
        assert drain() == 2
    chat = apis.wecom.join(state_of(app, mine), "wmPayer0001", "王小明", "小明@读书会")
    assert chat == CHATS[0]
    client = app.test_client()
    assert deliver(client, group_change(chat, MemChangeList={"Item": "wmPayer0001"})) == 200
    assert invitation_row(app, mine)[:2] == (InvitationStatus.ISSUED, None)  # not yet read
    with app.app_context():
        assert drain() == 1
    assert invitation_row(app, mine) == (InvitationStatus.JOINED, "wmPayer0001", wecom_tier[0])
    assert invitation_row(app, other)[:2] == (InvitationStatus.ISSUED, None)
    with app.app_context():
        used = db.session.get(Invitation, mine)
        assert used.wecom_config_id is None  # deleted at WeCom: nobody else can use it
        assert len(apis.wecom.join_ways) == 1
        row = db.session.scalars(
            sa.select(WeComGroupMember).where(WeComGroupMember.user_id == "wmPayer0001")
        ).one()
        assert (row.name, row.group_nickname, row.join_scene) == ("王小明", "小明@读书会", 3)
        assert row.invitation_id == mine


def test_someone_elses_qr_makes_a_freeloader_not_a_member(app, wecom_tier, apis, logged_in):
    mine = pay(app, 1)
    with app.app_context():
        drain()
    state = state_of(app, mine)
    apis.wecom.join(state, "wmPayer0001", "王小明", "小明")
    later = int(time.time()) + 60
    apis.wecom.join(state, "wmStranger01", "路人甲", "甲", at=later)  # the QR was passed on
    apis.wecom.add_member(CHATS[0], "wmInvited001", "朋友乙", "乙")  # added by a member
    assert deliver(app.test_client(), group_change(CHATS[0])) == 200
    with app.app_context():
        drain()
        assert invitation_row(app, mine)[:2] == (InvitationStatus.JOINED, "wmPayer0001")
        listed = [
            (row.user_id, str(why))  # a label, read here in the command's language
            for row, why in freeloaders(db.session.get(Group, wecom_tier[0]))
        ]
    assert listed == [  # in the order they joined
        ("wmInvited001", "未通过邀请入群"),
        ("wmStranger01", "用了别人的邀请"),
    ]
    page = logged_in.get(f"/admin/groups/{wecom_tier[0]}/freeloaders")
    assert page.status_code == 200
    assert "路人甲" in page.text and "朋友乙" in page.text and "王小明" not in page.text


def test_del_member_ticks_the_removal_task(app, demo, wecom_tier, apis, logged_in):
    mine = pay(app, 1)
    with app.app_context():
        drain()
    apis.wecom.join(state_of(app, mine), "wmPayer0001", "王小明", "小明@读书会")
    client = app.test_client()
    deliver(client, group_change(CHATS[0]))
    with app.app_context():
        drain()
        invitation = db.session.get(Invitation, mine)
        end_by_hand(invitation.membership, reason="refund by hand", actor="test")
        db.session.commit()
        assert drain() == 1  # the revoke: a removal task for the group's owner
        task = db.session.scalars(sa.select(RemovalTask)).one()
        assert task.done_at is None
    page = logged_in.get(f"/admin/communities/{demo.id}/removals")
    assert "小明@读书会" in page.text and "王小明" in page.text
    apis.wecom.leave(CHATS[0], "wmPayer0001")
    assert deliver(client, group_change(CHATS[0], "del_member", QuitScene="1")) == 200
    with app.app_context():
        drain()
        task = db.session.scalars(sa.select(RemovalTask)).one()
        assert (task.done_by, task.done_at is not None) == ("wecom", True)
        row = db.session.scalars(
            sa.select(WeComGroupMember).where(WeComGroupMember.user_id == "wmPayer0001")
        ).one()
        assert row.left_at is not None


def everything(app) -> dict:
    with app.app_context():
        return {
            "invitations": db.session.execute(
                sa.select(Invitation.status, Invitation.wecom_user_id).order_by(Invitation.id)
            ).all(),
            "tasks": count(PlatformTask),
            "members": count(WeComGroupMember),
            "groups": count(Group),
        }


@pytest.mark.parametrize(
    "keys",
    [
        {"token": "not-the-callback-token"},
        {"aes_key": "Z" * 43},  # signed right, encrypted with another key
        {"corp_id": "wwSomeoneElsesCorp"},
    ],
    ids=["forged-signature", "wrong-aes-key", "other-corp"],
)
def test_a_forged_or_wrongly_encrypted_callback_changes_nothing(app, wecom_tier, apis, keys):
    mine = pay(app, 1)
    with app.app_context():
        drain()
    apis.wecom.join(state_of(app, mine), "wmPayer0001", "王小明")
    before = everything(app)
    assert deliver(app.test_client(), group_change(CHATS[0]), **keys) == 400
    with app.app_context():
        assert drain() == 0
        [(status, detail)] = db.session.execute(
            sa.select(WebhookEvent.status, WebhookEvent.detail).where(
                WebhookEvent.provider == "wecom"
            )
        ).all()
    assert status is InboxStatus.REJECTED and "not a genuine WeCom callback" in detail
    assert everything(app) == before


def test_a_malformed_or_oversized_callback_is_refused_and_kept_cut_short(app, wecom_tier):
    client = app.test_client()
    answer = client.post("/webhooks/wecom", data=b"<xml><Encrypt>", content_type="text/xml")
    assert answer.status_code == 400
    huge = b"<xml><Encrypt>" + b"A" * MAX_NOTIFICATION_BYTES + b"</Encrypt></xml>"
    assert client.post("/webhooks/wecom", data=huge).status_code == 413
    with app.app_context():
        kept = db.session.scalars(
            sa.select(sa.func.length(WebhookEvent.body)).order_by(WebhookEvent.id)
        ).all()
        statuses = set(db.session.scalars(sa.select(WebhookEvent.status)))
        assert count(PlatformTask) == 0
    assert kept == [14, 0]  # refused unread: nothing of the large body is kept
    assert statuses == {InboxStatus.REJECTED}


def test_a_callback_for_an_unknown_group_is_recorded_and_ignored(app, wecom_tier, apis):
    pay(app, 1)
    with app.app_context():
        drain()
    apis.wecom.add_group("wrSomebodyElsesGroup", "别人的群")
    apis.wecom.add_member("wrSomebodyElsesGroup", "wmStranger01", "路人甲")
    before = everything(app)
    assert deliver(app.test_client(), group_change("wrSomebodyElsesGroup")) == 200
    with app.app_context():
        [(status, detail)] = db.session.execute(
            sa.select(WebhookEvent.status, WebhookEvent.detail).where(
                WebhookEvent.provider == "wecom"
            )
        ).all()
        assert status is InboxStatus.IGNORED and "unknown group chat" in detail
        assert drain() == 1  # read once, in case WeCom opened it for a join way: it did not
    after = everything(app)
    assert after == {**before, "tasks": before["tasks"] + 1}


def test_a_group_wecom_opens_for_a_full_join_way_is_adopted(app, demo, apis):
    with app.app_context():
        [group_id] = make_wecom_groups(apis, CHATS[:1])
    apis.wecom.group_size = 2  # the owner and one more
    first, second = pay(app, 1), pay(app, 2)
    with app.app_context():
        drain()
    assert apis.wecom.join(state_of(app, first), "wmPayer0001", "一号") == CHATS[0]
    spill = apis.wecom.join(state_of(app, second), "wmPayer0002", "二号")
    assert spill != CHATS[0]
    client = app.test_client()
    assert deliver(client, group_change(spill, ChangeType="create", UpdateDetail="")) == 200
    deliver(client, group_change(CHATS[0]))
    with app.app_context():
        drain()
        adopted = db.session.scalar(sa.select(Group).where(Group.wecom_chat_id == spill))
        assert adopted is not None and adopted.platform == "wecom"
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        assert [g.id for g in tier.groups] == [group_id, adopted.id]
        assert adopted.wecom_owner == fake_apis.WECOM_OWNER
        adopted_id = adopted.id
    assert invitation_row(app, first) == (InvitationStatus.JOINED, "wmPayer0001", group_id)
    assert invitation_row(app, second) == (InvitationStatus.JOINED, "wmPayer0002", adopted_id)


def test_reconciliation_repairs_what_lost_callbacks_missed(app, wecom_tier, apis, logged_in):
    people = [pay(app, n) for n in range(3)]
    with app.app_context():
        drain()
    for n in range(2):
        apis.wecom.join(state_of(app, people[n]), f"wmPayer000{n}", f"成员{n}")
    deliver(app.test_client(), group_change(CHATS[0]))
    with app.app_context():
        drain()
    # Then three changes whose callbacks are lost: one leaves, one joins with their own
    # join way, one is added by someone without any.
    apis.wecom.leave(CHATS[0], "wmPayer0000")
    apis.wecom.join(state_of(app, people[2]), "wmPayer0002", "成员2")
    apis.wecom.add_member(CHATS[0], "wmLateJoin01", "迟到者")
    assert invitation_row(app, people[2])[:2] == (InvitationStatus.ISSUED, None)

    answer = submit_form(logged_in, "/admin/wecom", {"reconcile": "y"})
    assert answer.status_code == 302
    with app.app_context():
        task = db.session.scalars(
            sa.select(PlatformTask).where(PlatformTask.action == TaskAction.RECONCILE)
        ).one()
        assert task.status is TaskStatus.PENDING  # queued, not run in the request
        assert drain() == 1
        left = db.session.scalar(
            sa.select(WeComGroupMember.left_at).where(WeComGroupMember.user_id == "wmPayer0000")
        )
        assert left is not None
        listed = [row.user_id for row, _ in freeloaders(db.session.get(Group, wecom_tier[0]))]
        assert listed == ["wmLateJoin01"]
    assert [invitation_row(app, i)[:2] for i in people] == [
        (InvitationStatus.JOINED, f"wmPayer000{n}") for n in range(3)
    ]


def test_url_verification_answers_the_decrypted_echo(app, wecom_tier):
    crypto_key = base64.b64decode(fake_apis.WECOM_ENCODING_AES_KEY + "=")
    echo = PrpCrypto(crypto_key).encrypt("echo-1234567", fake_apis.WECOM_CORP_ID).decode()
    signer = WeChatSigner()
    signer.add_data(fake_apis.WECOM_CALLBACK_TOKEN, "1700000000", "nonce1", echo)
    args = {
        "msg_signature": signer.signature,
        "timestamp": "1700000000",
        "nonce": "nonce1",
        "echostr": echo,
    }
    client = app.test_client()
    answer = client.get("/webhooks/wecom", query_string=args)
    assert (answer.status_code, answer.text) == (200, "echo-1234567")
    forged = client.get("/webhooks/wecom", query_string={**args, "msg_signature": "0" * 40})
    assert forged.status_code == 403


PAYERS = 60


@pytest.mark.committing
def test_sixty_payers_at_once_into_three_wecom_groups(tmp_path, _api_server):
    """60 payments confirmed at once: each gets a join way; their joins, reported by 60
    callbacks at once over real connections, mark 60 invitations joined, each with its own
    person; someone joining with another's QR is a freeloader, not credited."""
    apis = _api_server[0]
    apis.reset()
    with fresh_database(tmp_path, _api_server) as app:
        apis.wecom.group_size = 22  # the owner and 21: WeCom fills each in turn
        with app.app_context():
            seed_demo_community()
            make_wecom_groups(apis)
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            payments = [open_payment(tier, "fake", i) for i in range(PAYERS)]
            db.session.commit()
            deliveries = [signed_notification(p) for p in payments]
        start = threading.Barrier(PAYERS)

        def confirm(delivery):
            start.wait()
            with app.app_context():
                return inbox.receive("fake", *delivery).status

        with ThreadPoolExecutor(max_workers=PAYERS) as pool:
            assert set(pool.map(confirm, deliveries)) == {InboxStatus.PROCESSED}
        with app.app_context():
            assert drain(limit=1000) == PAYERS
            invitations = db.session.execute(
                sa.select(Invitation.id, Invitation.member_id).order_by(Invitation.id)
            ).all()
            states = {i: invitation_state(db.session.get(Invitation, i)) for i, _ in invitations}
        assert len(join_way_calls(apis, "add_join_way")) == PAYERS
        assert len({s for s in states.values()}) == PAYERS
        person = {member_id: f"wmPerson{member_id:04d}" for _, member_id in invitations}
        events = []
        for invitation_id, member_id in invitations:
            chat = apis.wecom.join(states[invitation_id], person[member_id], f"成员{member_id}")
            events.append(group_change(chat, MemChangeList={"Item": person[member_id]}))
        first_id, _ = invitations[0]
        # A minute later someone else scans the first payer's QR, passed on; WeCom seats
        # them in another group (the first is full), whose callback may be read first.
        later = int(time.time()) + 60
        stranger_chat = apis.wecom.join(states[first_id], "wmStranger01", "路人甲", at=later)
        events.append(group_change(stranger_chat, MemChangeList={"Item": "wmStranger01"}))

        server, base = _serve(app)
        try:
            go = threading.Barrier(len(events))

            def send(event):
                body, query = wecom_callback(event)
                go.wait()
                return requests.post(
                    f"{base}/webhooks/wecom",
                    params=query,
                    data=body,
                    headers={"Host": "qunmen.test", "Content-Type": "text/xml"},
                    timeout=60,
                ).status_code

            with ThreadPoolExecutor(max_workers=len(events)) as pool:
                assert set(pool.map(send, events)) == {200}
        finally:
            server.shutdown()
        with app.app_context():
            drain(limit=1000)
            joined = db.session.execute(
                sa.select(Invitation.member_id, Invitation.status, Invitation.wecom_user_id)
            ).all()
            assert sorted(joined) == sorted((m, InvitationStatus.JOINED, person[m]) for m in person)
            loaders = [
                row.user_id
                for group in db.session.scalars(sa.select(Group).where(Group.platform == "wecom"))
                for row, _why in freeloaders(group)
            ]
            assert loaders == ["wmStranger01"]
            assert count(Member) == PAYERS and count(Membership) == PAYERS


def test_wecom_refusals_are_retried_then_shown_to_admins(app, wecom_tier, apis, logged_in):
    mine = pay(app, 1)
    apis.wecom.error = 60011  # e.g. the app lost its 客户联系 permission
    now = utcnow()
    with app.app_context():
        assert drain(now=now) == 1
        task = db.session.scalars(sa.select(PlatformTask)).one()
        assert task.status is TaskStatus.PENDING and "60011" in task.last_error
    assert invitation_row(app, mine)[0] is InvitationStatus.ISSUED
    deliver(app.test_client(), group_change(CHATS[0]))
    with app.app_context():
        for hour in range(1, 12):  # past every backoff
            drain(now=now + timedelta(hours=hour))
        statuses = db.session.execute(
            sa.select(PlatformTask.action, PlatformTask.status).order_by(PlatformTask.id)
        ).all()
    assert statuses == [
        (TaskAction.GRANT, TaskStatus.FAILED),
        (TaskAction.SYNC, TaskStatus.FAILED),
    ]
    page = logged_in.get("/admin/platform-tasks").text
    assert f"企业微信 {CHATS[0]}" in page
    apis.wecom.error = None
    with app.app_context():
        failed = db.session.scalars(sa.select(PlatformTask.id).order_by(PlatformTask.id)).all()
    for task_id in failed:
        submit_form(logged_in, "/admin/platform-tasks", {"task": str(task_id)})
    with app.app_context():
        assert drain() == 2
        assert db.session.get(Invitation, mine).wecom_qr_url is not None


def test_a_grant_retried_after_a_failure_keeps_its_one_join_way(app, wecom_tier, apis):
    mine = pay(app, 1)
    apis.wecom.error, apis.wecom.failing = -1, {"externalcontact/groupchat/get_join_way"}
    now = utcnow()
    with app.app_context():
        drain(now=now)
        assert db.session.get(Invitation, mine).wecom_qr_url is None
    apis.wecom.error = None
    with app.app_context():
        drain(now=now + timedelta(hours=1))
        invitation = db.session.get(Invitation, mine)
        assert invitation.wecom_qr_url.endswith(invitation.wecom_config_id)
    assert len(join_way_calls(apis, "add_join_way")) == 1
    assert list(apis.wecom.join_ways) == [invitation.wecom_config_id]


def test_the_schedule_queues_one_reconciliation_at_a_time(app, wecom_tier, runner):
    assert "企业微信群核对已排队" in runner.invoke(args=["watch-groups"]).output
    assert "企业微信群核对未排队" in runner.invoke(args=["watch-groups"]).output  # one waits
    with app.app_context():
        assert drain() == 1
    assert "企业微信群核对已排队" in runner.invoke(args=["watch-groups"]).output
    with app.app_context():
        reconciliations = db.session.scalars(
            sa.select(PlatformTask.status)
            .where(PlatformTask.action == TaskAction.RECONCILE)
            .order_by(PlatformTask.id)
        ).all()
    assert reconciliations == [TaskStatus.DONE, TaskStatus.PENDING]


def test_an_admin_links_a_group_to_a_customer_group_wecom_lists(app, demo, apis, logged_in):
    apis.wecom.add_group("wrNewCustomerGroup01", "读书会新群", owner="lisi")
    form = f"/admin/communities/{demo.id}/groups/new"
    page = logged_in.get(form).text
    assert 'value="wrNewCustomerGroup01"' in page and "读书会新群 · 群主 lisi" in page
    fields = {"name": "企业微信新群", "platform": "wecom", "capacity": "500"}
    answer = submit_form(logged_in, form, {**fields, "wecom_chat_id": "wrNewCustomerGroup01"})
    assert answer.status_code == 302
    with app.app_context():
        group = db.session.scalar(sa.select(Group).where(Group.name == "企业微信新群"))
        assert (group.wecom_chat_id, group.wecom_owner) == ("wrNewCustomerGroup01", None)
        assert drain() == 1  # its owner and members, read by the worker
        db.session.refresh(group)
        assert group.wecom_owner == "lisi"
    again = submit_form(logged_in, form, {**fields, "wecom_chat_id": "wrNewCustomerGroup01"})
    assert again.status_code == 422 and "该客户群已属于另一个群" in again.text


def test_the_first_to_join_by_a_passed_on_qr_has_it_whatever_order_wecom_reports(
    app, wecom_tier, apis
):
    """The payer joins group 1; a minute later a stranger with the same QR lands in group 2
    (WeCom moved on: group 1 was full). Group 2 is read first: the stranger is credited
    for a while, then the payer, who came first, has it and the stranger is a freeloader."""
    apis.wecom.group_size = 2
    mine = pay(app, 1)
    with app.app_context():
        drain()
    state = state_of(app, mine)
    assert apis.wecom.join(state, "wmPayer0001", "王小明") == CHATS[0]
    later = int(time.time()) + 60
    assert apis.wecom.join(state, "wmStranger01", "路人甲", at=later) == CHATS[1]
    client = app.test_client()
    deliver(client, group_change(CHATS[1]))
    with app.app_context():
        drain()
    assert invitation_row(app, mine) == (InvitationStatus.JOINED, "wmStranger01", wecom_tier[1])
    deliver(client, group_change(CHATS[0]))
    with app.app_context():
        drain()
        [(loader, why)] = freeloaders(db.session.get(Group, wecom_tier[1]))
        why = str(why)
        assert freeloaders(db.session.get(Group, wecom_tier[0])) == []
    assert invitation_row(app, mine) == (InvitationStatus.JOINED, "wmPayer0001", wecom_tier[0])
    assert (loader.user_id, why) == ("wmStranger01", "用了别人的邀请")
