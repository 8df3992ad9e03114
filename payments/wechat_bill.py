"""The layout of WeChat Pay's daily bill (``bill_type=ALL``), which
:func:`payments.reconciliation.read_wechat_bill` reads.

WeChat Pay writes its bill in Chinese whatever the merchant's language: these column
names and markers are the file's format, not interface text, so they stay here as WeChat
spells them (``core.catalogs.OWN_TEXT`` lets this file keep Chinese outside the
catalogs).
"""

from __future__ import annotations

#: Where each value is, by the names WeChat gives the column (the first one found wins).
COLUMNS = {
    "time": ("交易时间",),
    "transaction": ("微信订单号",),
    "status": ("交易状态",),
    "currency": ("货币种类",),
    "amount": ("订单金额", "总金额", "应结订单金额"),
    "refund_id": ("微信退款单号",),
    "refund_amount": ("申请退款金额", "退款金额"),
    "fee": ("手续费",),
}
#: The bill's first line starts with this column.
FIRST_COLUMN = COLUMNS["time"][0]
#: The line after the last movement, where the totals begin.
TOTALS_MARKER = "总交易单数"
