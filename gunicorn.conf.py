"""Production serving: ``gunicorn -c gunicorn.conf.py "app:create_app()"``.

Settings come from the environment so one file serves every machine. Each worker is a
separate process holding no state of its own: sessions are signed cookies, and every lock
and counter lives in PostgreSQL, so any number of workers on any number of machines can
serve the same database.
"""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
# Threads let a worker answer a webhook while another request waits on the database (a
# PostgreSQL round trip, SQLite's write lock; on SQLite a GET now reads beside a writer).
# Measured again with bench/run webhook_ingest and page_render, 2 workers, threads 1 then
# 4 in one run on a shared 2-CPU machine: 4 gave more throughput and a lower p99 in every
# scenario on both databases (join page 224 against 53 pages/s on SQLite, 222 against 40
# on PostgreSQL; fresh Stripe deliveries 31 against 21 and 9.5 against 6.5 a second). One
# earlier sample said the opposite and the machine was busy both times: with many
# workers (WEB_CONCURRENCY) on a dedicated machine, compare GUNICORN_THREADS=1 there.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# WeChat Pay gives up on an answer after 5 seconds; nothing of ours should take 30.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# Behind a reverse proxy: which addresses may set X-Forwarded-* (the app's TRUSTED_PROXIES
# setting decides how many hops it believes).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# No access log here: gunicorn's would write each request's path, which may carry a token
# (a member link, a pay link). The app logs one line per request with its route instead.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
