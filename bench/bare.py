"""The bare baseline for webhook ingest: a Flask endpoint that stores the request body
with one INSERT and answers, on the same database set up the same way as the product
(``core.db``: WAL, busy timeout and BEGIN IMMEDIATE on SQLite)."""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Flask, jsonify, request

from core.clock import utcnow
from core.db import UTCDateTime, db, init_db

#: Not in the app's metadata: the migrations never see it.
bare_metadata = sa.MetaData()

bare_events = sa.Table(
    "bench_bare_events",
    bare_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    init_db(app)

    @app.post("/ingest")
    def ingest():
        db.session.execute(
            bare_events.insert().values(received_at=utcnow(), body=request.get_data())
        )
        db.session.commit()
        return jsonify({"received": True})

    return app
