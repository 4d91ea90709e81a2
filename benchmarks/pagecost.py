"""scripts/bench pagecost: where a page's time goes, in-process, next to a bare Flask app.

No server and no network: Flask's WSGI call on a warm app, timed as the minimum over
rounds of many requests (the rounds take the requests in turn), so the figures are the
CPU cost of each part of a request.
The cheesemaking vertical is generated from the template repository's HEAD, given
1,000 records per entity for one logged-in user, and measured step by step:

  a bare Flask "hello" app (the baseline of scripts/bench serve)
  the app answering "x" from a route added for this: its request hooks, no session
  the same route with the user's session cookie: the cookie read, the user loaded
  the list page's two queries (count and page) alone, on a warm connection
  the whole list page rendered (PAGE_CACHE off), then the same request with
  render_template answering "", then the page kept by app/pages.py (PAGE_CACHE on)
  the same three for the dashboard

The measuring runs in a child process inside the app's folder (its package is `app`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import harness

INSIDE = r'''
import sqlite3, sys, time
from pathlib import Path
from flask import Flask, g
from werkzeug.test import EnvironBuilder

sys.path.insert(0, REPO)
from benchmarks import harness
from app import create_app
from app.db import get_db

app = create_app()


@app.get("/__pagecost_plain")
def plain():
    return "x"


hello = Flask("hello")


@hello.get("/")
def hello_view():
    return "Hello, World!"


client = app.test_client()
token = harness.form_inputs(client.get("/signup").text)["csrf_token"]
client.post("/signup", data={"csrf_token": token, "account": "Bench", "email": "bench@example.com",
                             "password": "bench-password", "confirm": "bench-password"})
link = harness.mailed_link(Path(app.config["DATA_DIR"]), "bench@example.com")
if link:  # the link mailed to finish the sign-up
    client.post(link, data={"csrf_token": harness.form_inputs(client.get(link).text)["csrf_token"]})
db_path = app.config["DATABASE"]
account_id = sqlite3.connect(db_path).execute('SELECT "account_id" FROM "user"').fetchone()[0]
harness.fill(Path("."), Path(db_path), account_id, RECORDS)
client.get("/")  # the session now holds its CSRF token, as a browser's does after a page
cookie = {"Cookie": f"{SLUG}_session={client.get_cookie(SLUG + '_session').value}"}

entity = ENTITY
module = __import__(f"app.{entity['module']}", fromlist=["x"])
list_path = f"/{entity['url']}/"


def best(fns):
    """Microseconds per call of each function: the minimum over rounds. The rounds take
    the functions in turn, so a machine slowing down for a while slows them all."""
    for fn in fns:
        for _ in range(50):
            fn()
    times = [[] for _ in fns]
    for _ in range(ROUNDS):
        for fn, runs in zip(fns, times):
            start = time.perf_counter()
            for _ in range(PER_ROUND):
                fn()
            runs.append((time.perf_counter() - start) / PER_ROUND * 1e6)
    return [min(runs) for runs in times]


def request(wsgi, path, headers=None):
    environ = EnvironBuilder(path=path, headers=headers or {}).get_environ()

    def start_response(status, response_headers, exc_info=None):
        assert status.startswith("200"), (path, status)

    return lambda: b"".join(wsgi(dict(environ), start_response))


def list_data():
    db = get_db()
    where, params = '"account_id" = ?', [g.user["account_id"]]
    total = db.execute(f'SELECT count(*) FROM "{entity["name"]}" WHERE {where}', params).fetchone()[0]
    records = db.execute(f"{getattr(module, 'LIST_SELECT', module.SELECT)} WHERE {where} ORDER BY {module.NEWEST_FIRST} LIMIT ? OFFSET 0",
                         [*params, module.PER_PAGE]).fetchall()
    pages = max(1, (total + module.PER_PAGE - 1) // module.PER_PAGE)
    return dict(records=records, q="", sort="", page=1, pages=pages, total=total)


def without_html(views, fn):
    """fn, with the views' render_template answering "": the request minus its HTML."""
    def call():
        render, views.render_template = views.render_template, lambda *args, **kwargs: ""
        try:
            return fn()
        finally:
            views.render_template = render
    return call


def rendered(fn):
    """fn with PAGE_CACHE off: the page rendered, as when the database has just changed."""
    def call():
        app.config["PAGE_CACHE"] = False
        try:
            return fn()
        finally:
            app.config["PAGE_CACHE"] = True
    return call


main = __import__("app.main", fromlist=["x"])
# The queries run in a logged-in request to the list page, kept open beside the others.
context = app.test_request_context(list_path, headers=cookie)
context.push()
app.preprocess_request()
assert g.user is not None, "the session cookie does not log in"
measured = [
    ("bare Flask hello (baseline)", request(hello, "/")),
    ("app: a route answering 'x', no session", request(app, "/__pagecost_plain")),
    ("app: the same, logged in", request(app, "/__pagecost_plain", cookie)),
    (f"list {list_path}: its two queries alone", list_data),
    (f"list {list_path}: the whole page, rendered", rendered(request(app, list_path, cookie))),
    (f"list {list_path}: the same, no HTML rendered", rendered(without_html(module, request(app, list_path, cookie)))),
    (f"list {list_path}: the page kept (app/pages.py)", request(app, list_path, cookie)),
    ("dashboard: the whole page, rendered", rendered(request(app, "/", cookie))),
    ("dashboard: the same, no HTML rendered", rendered(without_html(main, request(app, "/", cookie)))),
    ("dashboard: the page kept (app/pages.py)", request(app, "/", cookie)),
]
rows = list(zip([label for label, _ in measured], best([fn for _, fn in measured])))
context.pop()
base = rows[0][1]
for label, us in rows:
    print(f"  {label:48} {us:8.0f} {us / base:8.1f}")
'''


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench pagecost")
    parser.add_argument("--slug", default="cheesemaking", help="the vertical to measure (default cheesemaking)")
    parser.add_argument("--records", type=int, default=1000, help="records per entity (default 1000)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=100)
    args = parser.parse_args(argv)

    harness.header(f"scripts/bench pagecost: {args.slug}, {args.records} records per entity, "
                   f"in-process, the minimum of {args.rounds} rounds of {args.per_round} requests")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-pagecost-") as tmp:
        tmp = Path(tmp)
        app_dir, data = harness.generated_app(tmp, args.slug)
        entity = harness.list_entity(app_dir)  # the list page scripts/bench serve loads
        setup = (f"REPO = {str(harness.REPO)!r}\nSLUG = {args.slug!r}\nRECORDS = {args.records}\n"
                 f"ROUNDS = {args.rounds}\nPER_ROUND = {args.per_round}\n"
                 f"ENTITY = {dict(name=entity['name'], module=entity['module'], url=entity['url'])!r}\n")
        print(f"  {'':48} {'us/request':>8} {'vs bare':>8}")
        done = subprocess.run([harness.PYTHON, "-c", setup + INSIDE], cwd=app_dir,
                              env={**os.environ, "DATA_DIR": str(data)}, text=True)
        if done.returncode != 0:
            sys.exit(done.returncode)
    print(f"  load average after: {harness.load_average()}")


if __name__ == "__main__":
    main()
