"""Languages: which one a page speaks, the switch, and catalogs that are complete."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import sqlalchemy as sa
import wtforms.i18n
from babel.messages.pofile import read_po
from flask import request

from core.auth import StaffUser
from core.db import db
from membership.models import Community, Member
from perks.cli import seed_demo_perks
from tests.helpers import (
    ADMIN_EMAIL,
    PROSPECT,
    cashier_action,
    join_and_pay,
    log_in,
    log_in_member,
    new_phone,
    open_join_form,
    submit_form,
    submit_join,
)

ROOT = Path(__file__).resolve().parent.parent


def lang_of(html: str) -> str:
    return re.search(r'<html lang="([^"]+)"', html).group(1)


def set_community_locale(app, slug: str, locale: str | None) -> None:
    with app.app_context():
        db.session.execute(sa.update(Community).where(Community.slug == slug).values(locale=locale))
        db.session.commit()


def test_the_catalogs_are_complete_current_and_the_only_text():
    """Every message of the code has a zh_CN and an en translation that keeps its
    placeholders, the catalogs hold nothing the code no longer says, and no template or
    Python source writes interface text (a "中文 · English" pair) outside them."""
    run = subprocess.run(  # noqa: S603 (our script)
        [str(ROOT / "bin/translations"), "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]


def test_a_community_page_speaks_the_community_language_first(app, client, demo):
    """The community's default beats the browser's Accept-Language; with no default, the
    browser decides; a language we have no catalog for falls back to Chinese."""
    english = {"Accept-Language": "en-US,en;q=0.9"}
    assert lang_of(client.get("/join/demo", headers=english).text) == "zh-CN"
    set_community_locale(app, "demo", None)
    assert lang_of(client.get("/join/demo", headers=english).text) == "en"
    assert lang_of(client.get("/join/demo", headers={"Accept-Language": "fr"}).text) == "zh-CN"
    set_community_locale(app, "demo", "en")
    assert lang_of(client.get("/join/demo").text) == "en"


def test_each_language_s_catalog_is_read(client, demo):
    """The Chinese catalog is found although Babel spells zh_CN ``zh_Hans_CN``."""
    assert 'aria-label="语言"' in client.get("/join/demo").text
    client.get("/lang/en")
    assert 'aria-label="Language"' in client.get("/join/demo").text


def test_the_switch_is_this_browser_s_choice_and_goes_back(client, demo):
    response = client.get("/lang/en?next=/join/demo")
    assert response.status_code == 302
    assert response.headers["Location"] == "/join/demo"
    assert lang_of(client.get("/join/demo").text) == "en"
    # The choice beats the community's default; the other browser keeps the default.
    assert lang_of(client.application.test_client().get("/join/demo").text) == "zh-CN"
    # Back to Chinese, from a page whose switch names it.
    page = client.get("/join/demo").text
    assert 'href="/lang/zh_CN?next=/join/demo"' in page
    client.get("/lang/zh_CN")
    assert lang_of(client.get("/join/demo").text) == "zh-CN"


def test_wtforms_own_messages_follow_each_request_s_language(client, demo):
    """WTForms' catalog is kept in memory per language (not loaded on every form): each
    request still gets its own language's."""
    browsers = {"zh_CN": client, "en": client.application.test_client()}
    browsers["en"].get("/lang/en")
    expected = {"zh_CN": "不是有效的选择", "en": "Not a valid choice"}
    for _round in range(2):
        for locale, browser in browsers.items():
            data = {**open_join_form(browser), **PROSPECT, "contact_kind": "fax"}
            response = browser.post("/join/demo/main", data=data)
            assert response.status_code == 422
            assert expected[locale] in response.text, locale


def test_the_switch_never_sends_a_browser_elsewhere_and_knows_its_languages(client):
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        assert client.get("/lang/en", query_string={"next": target}).headers["Location"] == "/"
    assert client.get("/lang/de").status_code == 404


def test_a_member_s_choice_is_kept_on_their_account_and_follows_their_login(app, client, demo):
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_value=phone)
    log_in_member(app, client, phone)
    client.get("/lang/en")
    with app.app_context():
        member = db.session.scalar(sa.select(Member).where(Member.contact_value == phone))
        assert member.locale == "en"
    # A new browser: the community says Chinese, the member's login says English.
    other = app.test_client()
    assert lang_of(other.get("/join/demo").text) == "zh-CN"
    log_in_member(app, other, phone)
    assert lang_of(other.get("/me").text) == "en"


def test_a_staff_member_s_choice_is_kept_and_starts_their_next_login(app, client, admin):
    log_in(client)
    client.get("/lang/en")
    with app.app_context():
        assert (
            db.session.scalar(sa.select(StaffUser.locale).where(StaffUser.email == ADMIN_EMAIL))
            == "en"
        )
    other = app.test_client()
    assert lang_of(other.get("/admin/login").text) == "zh-CN"
    log_in(other)
    assert lang_of(other.get("/admin/").text) == "en"


def wtforms_own_gaps(locale: str) -> list[str | tuple[str, str]]:
    """The messages WTForms' own catalog for ``locale`` leaves untranslated (fuzzy or
    empty, so left out of its compiled catalog): single ids, or (singular, plural)."""
    path = Path(wtforms.i18n.messages_path()) / locale / "LC_MESSAGES" / "wtforms.po"
    with path.open("rb") as po:
        catalog = read_po(po)
    return [
        message.id
        for message in catalog
        if message.id and (message.fuzzy or not all(message.string or [""]))
    ]


def _single(message: str | tuple[str, str]) -> str:
    return message[0] if isinstance(message, tuple) else message


def test_wtforms_messages_its_own_chinese_leaves_out_come_from_ours(app):
    gaps = wtforms_own_gaps("zh")
    assert gaps  # WTForms 3.2's Chinese leaves out four; a test of nothing otherwise
    with app.test_request_context(headers={"Accept-Language": "zh-CN"}):
        catalog = request.wtforms_translations
        for gap in gaps:
            if isinstance(gap, tuple):
                said = {catalog.ngettext(*gap, count) for count in (1, 2)}
                assert said.isdisjoint(gap), gap
            else:
                assert catalog.gettext(gap) != gap, gap
        assert all(re.search("[\u4e00-\u9fff]", catalog.gettext(_single(gap))) for gap in gaps)


def test_a_forged_choice_among_checkboxes_is_refused_in_the_page_s_language(client, demo, admin):
    log_in(client)
    base = f"/admin/communities/{demo.id}"
    data = {"code": "X1", "kind": "percent", "percent_off": "10", "tiers": "999"}
    page = submit_form(client, f"{base}/coupons/new", data).text
    assert "&#39;999&#39; 不是有效的选择" in page and "valid choice" not in page
    client.get("/lang/en")
    page = submit_form(client, f"{base}/coupons/new", data).text
    assert "&#39;999&#39; is not a valid choice for this field." in page


def test_a_whole_journey_stays_in_the_community_language(app, client, demo):
    """A browser asking for English on a Chinese community: the join page, the code page,
    the cashier, the status page, the member's page and a course page all speak Chinese
    (the community's default), not Chinese on some and English on the others."""
    with app.app_context():
        seed_demo_perks()
        db.session.commit()
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en-US,en;q=0.9"
    assert lang_of(client.get("/join/demo").text) == "zh-CN"
    sent = submit_join(client, contact_value="13600136001", prove=False)
    assert lang_of(client.get(sent.location).text) == "zh-CN"  # the code page
    cashier = submit_join(client, contact_value="13600136002")
    assert lang_of(client.get(cashier.location).text) == "zh-CN"  # the fake cashier
    status = cashier_action(client, cashier.location).location
    assert lang_of(client.get(status).text) == "zh-CN"
    member = app.test_client()
    member.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en-US,en;q=0.9"
    log_in_member(app, member, "13600136002")
    assert lang_of(member.get("/me").text) == "zh-CN"
    assert lang_of(member.get("/courses/demo/writing").text) == "zh-CN"
