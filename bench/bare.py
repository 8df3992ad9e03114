"""Bare baselines, served beside the product in the same run, on the same database set up
the same way as the product (``core.db``: WAL, busy timeout and BEGIN IMMEDIATE on SQLite):
a Flask endpoint that stores the request body with one INSERT (webhook ingest, order
creation), one that takes one of a stock with one conditional UPDATE (perk redemption),
a Flask + Jinja page of a given size (page render), and a JSON answer from one indexed
SELECT of a member by number (admin pages, lookups)."""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Flask, jsonify, render_template_string, request

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

bare_stock = sa.Table(
    "bench_bare_stock",
    bare_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stock", sa.Integer, nullable=False),
    sa.Column("taken", sa.Integer, nullable=False),
)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    if os.environ.get("DATABASE_PGBOUNCER") == "1":
        # Behind PgBouncer (bin/with-postgres --pgbouncer), as the product does: psycopg
        # must not prepare statements there (see config._engine_options).
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"prepare_threshold": None}}
    init_db(app)

    filler = "群门" * (int(os.environ.get("BARE_PAGE_BYTES", "6000")) // 6)
    page = "<!doctype html><html><body><h1>{{ title }}</h1><p>{{ filler }}</p></body></html>"

    @app.get("/page")
    def render_page():
        return render_template_string(page, title="群门读书会", filler=filler)

    @app.get("/one")
    def one_member():
        row = db.session.execute(
            sa.text("SELECT id, number_label FROM members WHERE community_id = 1 AND number = :n"),
            {"n": request.args.get("n", 1, type=int)},
        ).first()
        return jsonify({"id": row[0] if row else None})

    @app.post("/ingest")
    def ingest():
        db.session.execute(
            bare_events.insert().values(received_at=utcnow(), body=request.get_data())
        )
        db.session.commit()
        return jsonify({"received": True})

    @app.post("/take")
    def take():
        taken = db.session.execute(
            bare_stock.update()
            .where(bare_stock.c.id == 1, bare_stock.c.taken < bare_stock.c.stock)
            .values(taken=bare_stock.c.taken + 1)
        ).rowcount
        db.session.commit()
        return jsonify({"taken": bool(taken)})

    return app
