"""scripts/bench serve: a generated app under load versus a bare Flask app, same run.

The cheesemaking vertical is generated from the template repository's HEAD, given
1,000 records per entity for one logged-in user, and served by gunicorn with its own
generated gunicorn.conf.py. wrk, a second process on loopback, loads the dashboard, a
list page and a live-search fragment (HX-Request) with that user's session cookie. The
baseline is a bare Flask "hello" app under the very same gunicorn config (same workers,
threads, worker class), running beside it and loaded in turn with the app's pages, round
after round; each figure is the median of the rounds. GUNICORN_* variables in the
environment override the generated config for both (e.g. GUNICORN_THREADS=2).

One more row shows the ceiling: a route added to the app's own custom.py that answers
"x" to the logged-in user. It runs everything every page runs (request hooks, the signed
session, the user's row) and nothing else, so no page of the app can be faster.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from . import harness

# Appended to the generated app's custom.py, the founder's own file: the cheapest page.
CEILING = '''

# Added by scripts/bench serve: the cheapest page a logged-in user can ask for.
from .auth import login_required


@login_required
def _bench_ceiling():
    return "x"


_init_app = init_app


def init_app(app):
    _init_app(app)
    app.add_url_rule("/__bench-ceiling", "bench_ceiling", _bench_ceiling)
'''
CEILING_LABEL = "ceiling: logged-in route answering 'x'"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench serve")
    parser.add_argument("--slug", default="cheesemaking", help="the vertical to serve (default cheesemaking)")
    parser.add_argument("--records", type=int, default=1000, help="records per entity (default 1000)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5, help="per page and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all pages (default 3)")
    args = parser.parse_args(argv)

    harness.header(f"scripts/bench serve: {args.slug}, {args.records} records per entity, "
                   f"{args.connections} connections, {args.rounds} rounds of {args.seconds:g}s per page")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-serve-") as tmp:
        tmp = Path(tmp)
        app_dir, data = harness.generated_app(tmp, args.slug)
        config = app_dir / "gunicorn.conf.py"
        with open(app_dir / "app" / "custom.py", "a", encoding="utf-8") as custom:
            custom.write(CEILING)
        entity = harness.list_entity(app_dir)  # its list and search pages
        hello = harness.write_hello(tmp / "hello")

        # Both servers run side by side and are loaded in turn, round after round, so a
        # noisy neighbour slows the baseline as much as the app.
        app_bind, hello_bind = (f"127.0.0.1:{harness.free_port()}" for _ in range(2))
        with harness.Gunicorn(app_dir, config=config, data_dir=data, bind=app_bind, log=tmp / "app.log",
                              cpus=harness.SERVER_CPUS) as server, \
                harness.Gunicorn(hello, config=config, bind=hello_bind, app_uri="hello:app",
                                 log=tmp / "hello.log", cpus=harness.SERVER_CPUS) as bare:
            server.wait_ready()
            bare.wait_ready("/")
            browser = harness.sign_up(server.url(""), args.slug, data)
            db = data / f"{args.slug}.db"
            account_id = sqlite3.connect(db).execute('SELECT "account_id" FROM "user"').fetchone()[0]
            filled = harness.fill(app_dir, db, account_id, args.records)
            print(f"  filled: {', '.join(f'{n} {c}' for n, c in filled.items())}")
            # The page must really be the logged-in page, not a redirect to /login.
            if "/logout" not in browser.get("/"):
                raise SystemExit("the session cookie does not log in")
            if browser.get("/__bench-ceiling") != "x":
                raise SystemExit("the ceiling route did not answer 'x' to the logged-in user")
            cookie = {"Cookie": f"{args.slug}_session={browser.cookie(args.slug + '_session')}"}
            pages = [
                ("bare Flask hello (baseline)", bare.url("/"), {}),
                ("dashboard", server.url("/"), cookie),
                (f"list /{entity['url']}/", server.url(f"/{entity['url']}/"), cookie),
                (f"live search /{entity['url']}/?q=1 (HX)", server.url(f"/{entity['url']}/?q=1"),
                 {**cookie, "HX-Request": "true"}),
                (CEILING_LABEL, server.url("/__bench-ceiling"), cookie),
            ]
            for _, url, headers in pages:
                harness.wrk(url, connections=args.connections, seconds=2, headers=headers)  # warm-up
            runs = {label: [] for label, _, _ in pages}
            for _ in range(args.rounds):
                for label, url, headers in pages:
                    runs[label].append(harness.wrk(url, connections=args.connections, seconds=args.seconds,
                                                   headers=headers))
            locked = (tmp / "app.log").read_text().count("database is locked")

    rows = {label: harness.median_run(r) for label, r in runs.items()}
    base = rows.pop("bare Flask hello (baseline)")
    print(f"  gunicorn config: {config.name} as generated (bare app: same file, app hello:app)"
          f"{harness.gunicorn_env()}")
    print(f"  each figure: the median of {args.rounds} rounds; {harness.pinning()}")
    print(f"  {'page':40} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs bare':>8}")
    print(f"  {'bare Flask hello (baseline)':40} {base['rps']:8.0f} {base['p50_ms']:8.1f} {base['p99_ms']:8.1f} "
          f"{base['errors']:7d} {'1.00':>8}")
    for label, r in rows.items():
        print(f"  {label:40} {r['rps']:8.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:7d} "
              f"{r['rps'] / base['rps']:8.2f}")
    print(f"  'database is locked' in the app's log: {locked}")
    print(f"  load average after: {harness.load_average()}")
    judged = list(rows.values())[:2]
    goal = all(r["rps"] >= base["rps"] / 2 and r["p99_ms"] < 50 and r["errors"] == 0 for r in judged)
    print(f"  goal (dashboard and list >= 0.5x bare req/s, p99 < 50 ms): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
