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
# One thread per worker (gunicorn's sync worker; nginx in front buffers slow clients):
# more workers, not threads, serve requests side by side. Measured with bench/run
# page_render and webhook_ingest, 2 workers, threads 1 then 4 in one run at a quiet hour of
# the shared 2-CPU machine: one thread gave 2-84% more fresh payment deliveries a second and a lower
# p99 (SQLite Stripe 77 against 65/s, p99 176 against 248 ms; PostgreSQL 81 against 67/s,
# p99 203 against 373 ms; WeChat Pay v3 on PostgreSQL 92 against 50/s), and the join page
# 45% more on PostgreSQL (312 against 215/s) and as much on SQLite (436 against 451/s,
# p99 29 against 45 ms): a worker's threads share one GIL, and switching between them
# costs. Four threads won only while the machine was busy with other work (more threads
# take a larger share of a shared CPU). GUNICORN_THREADS > 1 switches to threaded workers.
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
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
