"""How a join form's code is kept: as its HMAC-SHA256 under the secret key, whichever way
it is computed, so that a code sent before an upgrade still works after it."""

from __future__ import annotations

import hashlib
import hmac

import sqlalchemy as sa

from core.db import db
from membership.models import LoginCode
from tests.helpers import PROSPECT, new_phone, open_join_form


def test_a_join_forms_code_is_kept_as_its_hmac_sha256(app, client, demo, monkeypatch):
    monkeypatch.setattr("secrets.randbelow", lambda _n: 123456)
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    assert client.post("/join/demo/main", data=data).status_code == 302
    with app.app_context():
        kept = db.session.scalar(sa.select(LoginCode.code_hash).order_by(LoginCode.id.desc()))
        key = app.config["SECRET_KEY"].encode()
    expected = hmac.new(key, b"qunmen.login-code.123456", hashlib.sha256).hexdigest()
    assert kept == expected
