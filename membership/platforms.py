"""The chat platforms a group can live on, and what we know of each.

Granting and revoking access for real (removal tasks for QR groups, Telegram's Bot API)
belongs to the group-platforms work; today every platform is joined by the QR image or the
link an admin stores on the group.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Platform:
    key: str
    label: str
    #: Most members a group can hold.
    max_members: int


PLATFORMS: dict[str, Platform] = {
    p.key: p
    for p in (
        Platform("wechat", "微信群 · WeChat", 500),
        Platform("wecom", "企业微信群 · WeCom", 500),
        Platform("qq", "QQ群 · QQ", 2000),
        Platform("telegram", "Telegram", 200_000),
    )
}
