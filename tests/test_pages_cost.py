"""What an admin page costs, counted rather than timed: the dashboard's statements (no
statement per community, tier, group, member or day can come back unseen), and the
catalog of a request looked up once (:class:`core.i18n.RequestCatalog`) while each request
still speaks its own language, one language a page."""

from __future__ import annotations

from flask_babel import Domain, force_locale, gettext

from tests.helpers import add_communities, log_in, statements


def dashboard_statements(client, url: str = "/admin/") -> list[str]:
    """The statements of one dashboard page."""
    with statements(client.application) as seen:
        assert client.get(url).status_code == 200
    return seen


def test_the_dashboard_reads_in_twelve_statements(app, demo, logged_in):
    """The staff member; the communities, their groups, their tiers and those tiers'
    groups; the seats waited for; the four attention counts; the daily figures; the paying
    members; the renewals due; the join page's visits; the header's community picker."""
    seen = dashboard_statements(logged_in, "/admin/?days=90&by=week")
    assert len(seen) == 12, "\n".join(seen)


def test_more_communities_tiers_and_groups_cost_no_statement_more(app, demo, logged_in):
    with app.app_context():
        add_communities(3, tiers=2, group_each_tier=False)
    assert "别的社群2" in logged_in.get("/admin/").text
    seen = dashboard_statements(logged_in)
    assert len(seen) == 12, "\n".join(seen)


def test_a_dashboard_looks_its_catalog_up_once(app, demo, logged_in, monkeypatch):
    """Flask-Babel's own lookup (the locale, its name, the catalogs by both) runs once a
    request, not once a message (sixty-odd a dashboard)."""
    looked_up = []
    real = Domain.get_translations

    def counted(self):
        looked_up.append(1)
        return real(self)

    monkeypatch.setattr(Domain, "get_translations", counted)
    assert logged_in.get("/admin/").status_code == 200
    assert len(looked_up) == 1


def test_each_request_speaks_its_own_language_on_the_whole_page(app, demo, admin, client):
    """Two browsers in turn, one switched to English: each page in its own language only,
    its text and its ``lang`` alike (a catalog kept beyond its request would mix them)."""
    english = app.test_client()
    for browser in (client, english):
        log_in(browser)
    english.get("/lang/en")
    words = {"zh-CN": ("群门后台", "待处理"), "en": ("Qunmen admin", "Needs attention")}
    for _round in range(3):
        for browser, lang, other in ((client, "zh-CN", "en"), (english, "en", "zh-CN")):
            page = browser.get("/admin/").text
            assert f'<html lang="{lang}">' in page
            assert words[lang][0] in page
            assert not any(word in page for word in words[other])


def test_a_message_written_in_another_language_leaves_the_page_in_its_own(app):
    """``force_locale`` (a message to a member in their language, written during a
    request) gets its own catalog and gives the request's back."""
    with app.test_request_context("/", headers={"Accept-Language": "en"}):
        assert gettext("Log out") == "Log out"
        with force_locale("zh_CN"):
            assert gettext("Log out") == "退出"
        assert gettext("Log out") == "Log out"
    with app.test_request_context("/"):
        assert gettext("Log out") == "退出"
