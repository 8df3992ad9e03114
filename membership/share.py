"""How a join page looks when it is shared inside WeChat: the official account's JS-SDK
settings (``wx.config`` with a signature from the account's ``jsapi_ticket``), so that
"send to a friend" and "share to Moments" carry the page's title, description and icon.

The ticket is fetched with the official account's client (:mod:`core.outbox`: the
configured API address, the access token kept for the app) and kept until it ends, so
one page view in about two hours calls WeChat. Nothing is called unless an official
account is configured and the visitor is inside WeChat; a failure leaves the page as it
is (meta tags only)."""

from __future__ import annotations

import logging
import time

from flask import current_app, request, url_for
from wechatpy.exceptions import WeChatClientException

from core.outbox import _official_account
from core.security import new_token
from payments.views import current_payer

log = logging.getLogger(__name__)

#: What the page asks the JS-SDK for (WeChat's names).
SHARE_APIS = ("updateAppMessageShareData", "updateTimelineShareData")


def page_url() -> str:
    """The address of this page as the browser shows it (on ``PUBLIC_BASE_URL``, without
    a fragment): what WeChat checks the signature against."""
    url = url_for(request.endpoint, _external=True, **(request.view_args or {}))
    query = request.query_string.decode()
    return f"{url}?{query}" if query else url


def wechat_share_config() -> dict | None:
    """Called by the join pages' template while it is drawn: ``wx.config``'s settings for
    this page, or None (no official account, not inside WeChat, or WeChat refused).
    May fetch the ``jsapi_ticket`` (cached); changes nothing of ours."""
    config = current_app.config
    if not (config.get("WECHATPAY_APP_ID") and config.get("WECHATPAY_APP_SECRET")):
        return None
    if not current_payer().in_wechat:
        return None
    client = _official_account()
    try:
        ticket = client.jsapi.get_jsapi_ticket()
    except (WeChatClientException, OSError) as error:
        log.warning("no WeChat share settings: the jsapi_ticket was refused: %s", error)
        return None
    nonce, timestamp = new_token(12), int(time.time())
    return {
        "appId": config["WECHATPAY_APP_ID"],
        "timestamp": timestamp,
        "nonceStr": nonce,
        "signature": client.jsapi.get_jsapi_signature(nonce, ticket, timestamp, page_url()),
        "jsApiList": list(SHARE_APIS),
    }
