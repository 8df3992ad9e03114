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
# Threads let a worker answer a webhook while another request waits on the database.
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
