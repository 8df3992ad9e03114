"""The session cookie's signing serializer is made once for the app's keys, not twice a
request; a new key (with the old one as a fallback) makes a new one, which still opens the
sessions signed before."""

from __future__ import annotations

from membership.views import APPLICATIONS_SESSION_KEY
from tests.helpers import PROSPECT, new_phone, open_join_form


def test_the_session_serializer_is_made_once_for_the_apps_keys(app, client, demo, monkeypatch):
    sessions = app.session_interface
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    assert client.post("/join/demo/main", data=data).status_code == 302
    first = sessions.get_signing_serializer(app)
    assert client.get("/join/demo/main").status_code == 200
    assert sessions.get_signing_serializer(app) is first
    with client.session_transaction() as session:
        applications = session[APPLICATIONS_SESSION_KEY]
    old = app.secret_key
    monkeypatch.setitem(app.config, "SECRET_KEY", "a new key, the old one a fallback")
    monkeypatch.setitem(app.config, "SECRET_KEY_FALLBACKS", [old])
    assert client.get("/join/demo/main").status_code == 200
    assert sessions.get_signing_serializer(app) is not first
    with client.session_transaction() as session:
        assert session[APPLICATIONS_SESSION_KEY] == applications
