"""scripts/bench write: create-record form posts at rising load, as a customer sends them.

A generated app (cheesemaking) runs under gunicorn with its generated config; one
logged-in user's session cookie and CSRF token go into a wrk Lua script that posts the
"new record" form of one entity, every post with its own unique values, from 1, 2, 4 ...
concurrent connections (each connection sends its next post as soon as the previous one
is answered, so more connections offer a higher rate). Every post must answer 302 (saved,
redirected to the record); the database must hold exactly as many new records as
answered posts, and the app's log must not say "database is locked". The result is the
highest rate sustained with zero errors, with its p99 latency.

The baseline, in the same run and the same gunicorn config: a bare Flask app answering
a POST with a redirect, at the same connection counts.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import harness

UNIQUE = "\x00"  # replaced by a value unique to each post

LUA = r'''
local parts = {%(parts)s}
local counter = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function request()
  counter = counter + 1
  local unique = %(prefix)s .. tid .. "-" .. counter
  return wrk.format("POST", %(path)s, nil, table.concat(parts, unique))
end
'''

HELLO_POST = '''

from flask import redirect, request


@app.post("/things/new")
def new_thing():
    request.form  # parse the body, as the app does
    return redirect("/things/1")
'''


def form_body(entity: dict, ids: dict, token: str) -> str:
    """The url-encoded new-record form, UNIQUE where each post needs its own value."""
    data = [("csrf_token", token)]
    for f in entity["fields"]:
        kind, name = f["type"], f["name"]
        if kind == "string":
            data.append((name, UNIQUE))
        elif kind == "text":
            data.append((name, "A note written by the write benchmark. " + UNIQUE))
        elif kind == "integer":
            data.append((name, str(int(float(f["min"])) if f.get("min") is not None else 3)))
        elif kind == "decimal":
            low = float(f["min"]) if f.get("min") is not None else 1.0
            data.append((name, f"{low:.{f['places']}f}"))
        elif kind == "boolean":
            data.append((name, "y"))
        elif kind == "date":
            data.append((name, "2024-05-01"))
        elif kind == "datetime":
            data.append((name, "2024-05-01T10:30:00"))
        elif kind == "email":
            data.append((name, UNIQUE + "@example.com"))
        elif kind == "url":
            data.append((name, "https://example.com/" + UNIQUE))
        elif kind == "choice":
            data.append((name, f["choices"][0]))
        elif kind == "ref":
            data.append((name, str(ids[f["to"]])))
    body = urllib.parse.urlencode(data)
    return body.replace(urllib.parse.quote(UNIQUE), UNIQUE)


def check(browser: harness.Browser, path: str, body: str) -> None:
    """One post first: it must save and redirect to the new record, else say why."""
    request = urllib.request.Request(browser.base + path, body.replace(UNIQUE, "check").encode())
    try:
        with browser.opener.open(request, timeout=30) as response:
            final, page = response.geturl(), response.read().decode()
    except urllib.error.HTTPError as e:
        final, page = path, e.read().decode()
    if final.rstrip("/").endswith(path.rstrip("/")) or "/new" in final:
        errors = re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]+)', page)
        raise SystemExit(f"the form post did not save: {errors or page[:2000]}")


def lua(path: str, body: str, prefix: str) -> str:
    """The wrk script; `prefix` makes every run's values differ from the other runs'."""
    parts = ", ".join(f"[==[{p}]==]" for p in body.split(UNIQUE))
    return LUA % {"parts": parts, "path": f'"{path}"', "prefix": f'"{prefix}-"'}


def ladder(url: str, steps: list[int], seconds: float, headers: dict, script, count=None) -> list[dict]:
    """wrk at each connection count; script(run name) gives the Lua script."""
    results = []
    for connections in steps:
        before = count() if count else 0
        r = harness.wrk(url, connections=connections, seconds=seconds, headers=headers, script=script(f"c{connections}"))
        r["connections"] = connections
        if count:
            saved = count() - before
            r["missing"] = max(0, r["requests"] - saved)  # answered but not in the database (posts still in flight at the end are saved but not counted)
        results.append(r)
    return results


def best(results: list[dict]) -> dict | None:
    clean = [r for r in results if r["errors"] == 0 and not r.get("missing") and not r.get("locked")]
    return max(clean, key=lambda r: r["rps"]) if clean else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench write")
    parser.add_argument("--slug", default="cheesemaking")
    parser.add_argument("--entity", default="batch", help="the entity whose form is posted (default batch)")
    parser.add_argument("--steps", default="1,2,4,8,16,32", help="connection counts (default 1,2,4,8,16,32)")
    parser.add_argument("--seconds", type=float, default=8, help="per step (default 8)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]

    harness.header(f"scripts/bench write: {args.slug}, posts to the {args.entity} form, "
                   f"{args.seconds:g}s per step")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-write-") as tmp:
        tmp = Path(tmp)
        app_dir, data = harness.generated_app(tmp, args.slug)
        config = app_dir / "gunicorn.conf.py"
        entity = next(e for e in harness.answers(app_dir)["entities"] if e["name"] == args.entity)
        db_path = data / f"{args.slug}.db"

        def count():
            conn = sqlite3.connect(db_path)
            try:
                return conn.execute(f'SELECT count(*) FROM "{entity["name"]}"').fetchone()[0]
            finally:
                conn.close()

        log = tmp / "app.log"
        bind = f"127.0.0.1:{harness.free_port()}"
        with harness.Gunicorn(app_dir, config=config, data_dir=data, bind=bind, log=log,
                              cpus=harness.SERVER_CPUS) as server:
            server.wait_ready()
            browser = harness.sign_up(server.url(""), args.slug, data)
            conn = sqlite3.connect(db_path)
            account_id = conn.execute('SELECT "account_id" FROM "user"').fetchone()[0]
            conn.close()
            harness.fill(app_dir, db_path, account_id, 10)  # records for the form's refs to point at
            conn = sqlite3.connect(db_path)
            ids = {e["name"]: conn.execute(f'SELECT min("id") FROM "{e["name"]}"').fetchone()[0]
                   for e in harness.answers(app_dir)["entities"]}
            conn.close()
            path = f"/{entity['url']}/new"
            token = harness.form_inputs(browser.get(path))["csrf_token"]
            headers = {"Cookie": f"{args.slug}_session={browser.cookie(args.slug + '_session')}",
                       "Content-Type": "application/x-www-form-urlencoded"}
            body = form_body(entity, ids, token)
            check(browser, path, body)
            def script(run):
                return lua(path, body, run)

            harness.wrk(server.url(path), connections=2, seconds=2, headers=headers, script=script("warm"))
            results = []
            for connections in steps:
                seen = log.read_text().count("database is locked")
                r = ladder(server.url(path), [connections], args.seconds, headers, script, count)[0]
                r["locked"] = log.read_text().count("database is locked") - seen
                results.append(r)

        hello = harness.write_hello(tmp / "hello")
        (hello / "hello.py").write_text((hello / "hello.py").read_text() + HELLO_POST)
        bind = f"127.0.0.1:{harness.free_port()}"
        with harness.Gunicorn(hello, config=config, bind=bind, app_uri="hello:app", log=tmp / "hello.log",
                              cpus=harness.SERVER_CPUS) as server:
            server.wait_ready()
            base = ladder(server.url("/things/new"), steps, args.seconds,
                          {"Content-Type": "application/x-www-form-urlencoded"},
                          lambda run: lua("/things/new", "code=" + UNIQUE, run))

    print(f"  {harness.pinning()}{harness.gunicorn_env()}")
    print(f"  {'connections':>11} {'creates/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'locked':>7} "
          f"{'lost':>5} {'bare req/s':>11} {'vs bare':>8}")
    for r, b in zip(results, base):
        print(f"  {r['connections']:11d} {r['rps']:10.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:7d} "
              f"{r['locked']:7d} {r['missing']:5d} {b['rps']:11.0f} {r['rps'] / b['rps']:8.2f}")
    top, top_base = best(results), best(base)
    if top:
        print(f"  highest rate with zero errors: {top['rps']:.0f} creates/s at {top['connections']} connections, "
              f"p99 {top['p99_ms']:.1f} ms (bare Flask POST+redirect: {top_base['rps']:.0f} req/s, "
              f"ratio {top['rps'] / top_base['rps']:.2f})")
    else:
        print("  no step ran without errors")
    print(f"  load average after: {harness.load_average()}")
    print(f"  goal (>= 300 creates/s, zero errors): {'met' if top and top['rps'] >= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
