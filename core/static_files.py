"""Our static files (``static/``): served with their version in the URL, so browsers keep
them for a year and fetch a new copy exactly when the file changes, and ``/favicon.ico``,
which browsers and WeChat ask for at the root whatever the page says."""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Flask, Response, request

#: How long a browser may keep a static file whose URL names its current version.
VERSIONED_MAX_AGE = 365 * 24 * 3600
#: How long ``/favicon.ico`` (whose URL has no version) may be kept.
FAVICON_MAX_AGE = 24 * 3600


def file_versions(folder: Path) -> dict[str, str]:
    """Each file under ``folder`` (its path relative to it, with ``/``) with a short hash
    of its content. Called once at start-up."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def init_static_files(app: Flask) -> None:
    """Called once by ``create_app``: every ``url_for('static', filename=...)`` gains
    ``?v=<hash>``; a request naming the current version is answered with a long, public,
    immutable ``Cache-Control``, any other with Flask's default (revalidated)."""
    versions = file_versions(Path(app.static_folder))
    app.extensions["static_versions"] = versions
    serve = app.view_functions["static"]

    @app.url_defaults
    def add_version(endpoint: str, values: dict) -> None:
        if endpoint == "static" and "v" not in values and values.get("filename") in versions:
            values["v"] = versions[values["filename"]]

    def static(filename: str) -> Response:
        response = serve(filename=filename)
        if request.args.get("v") and request.args.get("v") == versions.get(filename):
            response.cache_control.public = True
            response.cache_control.max_age = VERSIONED_MAX_AGE
            response.cache_control.immutable = True
            response.cache_control.no_cache = None
        return response

    app.view_functions["static"] = static

    @app.get("/favicon.ico")
    def favicon() -> Response:
        response = app.send_static_file("favicon.ico")
        response.cache_control.public = True
        response.cache_control.max_age = FAVICON_MAX_AGE
        response.cache_control.no_cache = None
        return response
