"""The demo community's own content: its name, pitch and rules, its groups, tiers, perks,
coupon, course and offers, as ``flask seed-demo`` and ``flask seed-demo-perks`` create
them.

This is an operator's content, not interface text: a community writes it once, in its own
language, and every reader sees it as written. The demo is a Chinese reading circle, so it
is written in Chinese, here and only here (``core.catalogs.OWN_TEXT`` lets this file keep
Chinese outside the catalogs).
"""

from __future__ import annotations

COMMUNITY = {
    "name": "群门读书会",
    "pitch": "每周一次共读分享，按入群顺序编号，老成员专享福利与课程折扣。",
    "rules": "1. 友善交流，不发广告。\n2. 每月至少参与一次分享。\n3. 不外传群内资料。",
}
#: The groups, by the tier that leads to them.
LOBBY_GROUP = "大厅群"
MAIN_GROUP = "正式一群"
#: What each group's demo QR code says when scanned (a real group's QR is WeChat's).
QR_TEXT = {LOBBY_GROUP: "群门演示：大厅群", MAIN_GROUP: "群门演示：正式一群"}
#: Tiers by code: their name and what they include (one item a line).
TIERS = {
    "lobby": {"name": "大厅", "includes": "免费进入大厅群\n了解社群，等待审核"},
    "main": {"name": "正式成员", "includes": "正式群成员编号\n每周共读分享\n老成员福利与课程折扣"},
    "reentry": {"name": "回归", "includes": "清退后回归，保留原编号"},
}
COUPON_DESCRIPTION = "新成员九折"
COURSE = {"title": "21天写作课", "description": "每天一篇短文，老师逐篇点评。"}
BOOK_VOUCHER = {"name": "读书券", "description": "凭券到合作书店领一本书"}
FOUNDERS_PACK = "元老礼包"
MEMBERS_OFFER = "成员八折"
VETERANS_OFFER = "老成员七折"
