"""Pages kept until the database changes: the dashboard and the list pages.

These pages are made from three things only: the database, the session and the request's
URL (and whether htmx asks for the table alone). So each server thread keeps the pages
it renders, keyed by session and URL, and forgets them all the moment anything is
committed to the database: by this thread (its connection's total_changes) or by any
other connection, thread or process (PRAGMA data_version: another worker, `flask
restore`, the sqlite3 shell). A page asked for again before that costs little more than
the session check every request makes; rendering it costs several times as much.

Nothing is kept for a visitor who is not logged in, for a request that shows a flash
message, or from a request that changed the session; nor at all if CSRF tokens expire
(WTF_CSRF_TIME_LIMIT, off in create_app): a kept page's forms carry the token it was
rendered with. Set PAGE_CACHE = False in the config (or PAGE_CACHE=0 in the
environment) if a page of yours shows anything else, such as the time of day.
"""

import functools
import threading

from flask import current_app, g, request, session

from .db import get_db

# What each thread keeps at most: past either bound, the oldest pages go.
MAX_PAGES = 32
MAX_BYTES = 2 * 1024 * 1024

_thread = threading.local()


def cached(view):
    """Answer with the page this thread kept for the same session and URL, if the
    database has not changed since; otherwise call the view and keep its page."""

    @functools.wraps(view)
    def wrapped_view(**kwargs):
        if not cacheable():
            return view(**kwargs)
        db = get_db()
        # Another connection's commit changes data_version; this one's, total_changes.
        state = (db, db.execute("PRAGMA data_version").fetchone()[0], db.total_changes)
        if getattr(_thread, "state", None) != state:
            _thread.state = state
            _thread.pages = {}  # key -> (body, headers), oldest first
            _thread.size = 0  # what the kept pages take (see size)
        key = (
            session["session_id"],
            session["csrf_token"],  # the page's forms carry the session's token
            request.script_root,
            request.full_path,
            # As the views read them: the table alone, or the whole page.
            bool(request.headers.get("HX-Request")),
            bool(request.headers.get("HX-History-Restore-Request")),
        )
        page = _thread.pages.get(key)
        if page is not None:
            body, headers = page
            return current_app.response_class(body, headers=headers)
        response = current_app.make_response(view(**kwargs))
        if response.status_code == 200 and not session.modified and db.total_changes == state[2]:
            keep(key, response.get_data(), list(response.headers))
        return response

    return wrapped_view


def cacheable():
    """A logged-in GET with nothing to show once (flash messages) and a CSRF token
    that never expires."""
    return (
        current_app.config["PAGE_CACHE"]
        and request.method == "GET"
        and g.user is not None
        and "_flashes" not in session
        and "csrf_token" in session
        and current_app.config.get("WTF_CSRF_TIME_LIMIT", 3600) is None  # Flask-WTF's default
    )


def keep(key, body, headers):
    """Keep a page for this thread; past MAX_PAGES or MAX_BYTES, drop the oldest."""
    pages = _thread.pages
    pages[key] = (body, headers)
    _thread.size += size(key, body)
    while len(pages) > MAX_PAGES or _thread.size > MAX_BYTES:
        oldest = next(iter(pages))
        _thread.size -= size(oldest, pages.pop(oldest)[0])


def size(key, body):
    """What a kept page takes, roughly: its body and its key (the URL: up to a few KB)."""
    return len(body) + sum(len(part) for part in key if isinstance(part, str))
