"""scripts/bench serve: a generated app under load versus a bare Flask app, same run.

The cheesemaking vertical is generated from the template repository's HEAD, given
1,000 records per entity for one logged-in user, and served by gunicorn with its own
generated gunicorn.conf.py. wrk, a second process on loopback, loads the dashboard, a
list page and a live-search fragment (HX-Request) with that user's session cookie. The
baseline is a bare Flask "hello" app under the very same gunicorn config (same workers,
threads, worker class), measured in the same run.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from . import harness


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench serve")
    parser.add_argument("--slug", default="cheesemaking", help="the vertical to serve (default cheesemaking)")
    parser.add_argument("--records", type=int, default=1000, help="records per entity (default 1000)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="per measurement (default 10)")
    args = parser.parse_args(argv)

    harness.header(f"scripts/bench serve: {args.slug}, {args.records} records per entity, "
                   f"{args.connections} connections, {args.seconds:g}s per page")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-serve-") as tmp:
        tmp = Path(tmp)
        app_dir, data = harness.generated_app(tmp, args.slug)
        config = app_dir / "gunicorn.conf.py"
        entities = harness.answers(app_dir)["entities"]
        # The list and search pages: the entity with the most fields among those with a search.
        entity = max((e for e in entities if e.get("search")), key=lambda e: len(e["fields"]))

        rows = []
        bind = f"127.0.0.1:{harness.free_port()}"
        with harness.Gunicorn(app_dir, config=config, data_dir=data, bind=bind, log=tmp / "app.log") as server:
            server.wait_ready()
            browser = harness.sign_up(server.url(""), args.slug)
            db = data / f"{args.slug}.db"
            account_id = sqlite3.connect(db).execute('SELECT "account_id" FROM "user"').fetchone()[0]
            filled = harness.fill(app_dir, db, account_id, args.records)
            print(f"  filled: {', '.join(f'{n} {c}' for n, c in filled.items())}")
            cookie = {"Cookie": f"{args.slug}_session={browser.cookie(args.slug + '_session')}"}
            pages = [
                ("dashboard", "/", cookie),
                (f"list /{entity['url']}/", f"/{entity['url']}/", cookie),
                (f"live search /{entity['url']}/?q=1 (HX)", f"/{entity['url']}/?q=1", {**cookie, "HX-Request": "true"}),
            ]
            for label, path, headers in pages:
                # The page must really be the logged-in page, not a redirect to /login.
                if "/logout" not in browser.get(path) and label == "dashboard":
                    raise SystemExit("the session cookie does not log in")
                harness.wrk(server.url(path), connections=args.connections, seconds=2, headers=headers)  # warm-up
                rows.append((label, harness.wrk(server.url(path), connections=args.connections,
                                                seconds=args.seconds, headers=headers)))
            locked = (tmp / "app.log").read_text().count("database is locked")

        hello = harness.write_hello(tmp / "hello")
        bind = f"127.0.0.1:{harness.free_port()}"
        with harness.Gunicorn(hello, config=config, bind=bind, app_uri="hello:app", log=tmp / "hello.log") as server:
            server.wait_ready()
            harness.wrk(server.url("/"), connections=args.connections, seconds=2)
            base = harness.wrk(server.url("/"), connections=args.connections, seconds=args.seconds)

    print(f"  gunicorn config: {config.name} as generated (bare app: same file, app hello:app)")
    print(f"  {'page':40} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs bare':>8}")
    print(f"  {'bare Flask hello (baseline)':40} {base['rps']:8.0f} {base['p50_ms']:8.1f} {base['p99_ms']:8.1f} "
          f"{base['errors']:7d} {'1.00':>8}")
    for label, r in rows:
        print(f"  {label:40} {r['rps']:8.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:7d} "
              f"{r['rps'] / base['rps']:8.2f}")
    print(f"  'database is locked' in the app's log: {locked}")
    print(f"  load average after: {harness.load_average()}")
    goal = all(r["rps"] >= base["rps"] / 2 and r["p99_ms"] < 50 and r["errors"] == 0 for _, r in rows[:2])
    print(f"  goal (dashboard and list >= 0.5x bare req/s, p99 < 50 ms): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
