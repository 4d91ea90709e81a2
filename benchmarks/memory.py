"""scripts/bench memory: the memory of one idle generated app versus a bare Flask app.

The cheesemaking vertical (or --slug, --spec) runs under gunicorn with its generated
config; after a warm-up (sign-up, then every page type of every entity a few times, so
templates are compiled and modules imported as in normal use) and 12 idle seconds, the
RSS and PSS of the master and its workers are read from /proc/<pid>/smaps_rollup and
summed. PSS shares each page among the processes that map it, so PSS totals add up
across the apps of a box; RSS counts shared pages once per process.

The baseline, same run: a bare Flask "hello" app under gunicorn with one worker (the
same gunicorn config file, with GUNICORN_WORKERS=1), warmed up with as many requests.
For reference, the same bare app under gunicorn's own defaults (one sync worker, none of
the generated config's memory settings) is measured too.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from . import harness


def warm_up(browser: harness.Browser, entities: list[dict], rounds: int) -> int:
    """Every page type of every entity, `rounds` times; the number of requests."""
    paths = ["/"]
    for e in entities:
        paths += [f"/{e['url']}/", f"/{e['url']}/?q=1", f"/{e['url']}/new", f"/{e['url']}/1",
                  f"/{e['url']}/1/edit", f"/{e['url']}/export.csv"]
    for _ in range(rounds):
        for path in paths:
            browser.get(path)
    return rounds * len(paths)


def hello_memory(hello: Path, config: Path, requests: int, settle: float, log: Path) -> dict:
    """The bare app under `config` with one worker, after as many requests as the app had."""
    bind = f"127.0.0.1:{harness.free_port()}"
    with harness.Gunicorn(hello, config=config, bind=bind, app_uri="hello:app", log=log,
                          env={"GUNICORN_WORKERS": "1"}) as server:
        server.wait_ready()
        for _ in range(requests):
            harness.http_ok(server.url("/"))
        time.sleep(settle)
        return harness.memory_kb(server.pid)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench memory")
    parser.add_argument("--slug", default="cheesemaking", help="an example vertical (default cheesemaking)")
    parser.add_argument("--spec", type=Path, help="a spec file to generate instead (benchmarks/large.toml)")
    parser.add_argument("--rounds", type=int, default=5, help="warm-up rounds over every page (default 5)")
    parser.add_argument("--settle", type=float, default=12,
                        help="seconds idle before measuring (default 12: the generated config hands freed "
                             "memory back after 5 idle seconds)")
    args = parser.parse_args(argv)
    if args.spec:
        args.slug = harness.spec_slug(args.spec)

    harness.header(f"scripts/bench memory: {args.slug}, idle after {args.rounds} warm-up rounds")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-memory-") as tmp:
        tmp = Path(tmp)
        app_dir, data = harness.generated_app(tmp, args.slug, args.spec)
        config = app_dir / "gunicorn.conf.py"
        entities = harness.answers(app_dir)["entities"]

        bind = f"127.0.0.1:{harness.free_port()}"
        with harness.Gunicorn(app_dir, config=config, data_dir=data, bind=bind, log=tmp / "app.log") as server:
            server.wait_ready()
            browser = harness.sign_up(server.url(""), args.slug, data)
            db = data / f"{args.slug}.db"
            conn = sqlite3.connect(db)
            account_id = conn.execute('SELECT "account_id" FROM "user"').fetchone()[0]
            conn.close()
            harness.fill(app_dir, db, account_id, 50)
            requests = warm_up(browser, entities, args.rounds)
            time.sleep(args.settle)
            app_mem = harness.memory_kb(server.pid)

        hello = harness.write_hello(tmp / "hello")
        defaults = tmp / "defaults.conf.py"
        # gunicorn's own defaults (one sync worker); only its control socket is off, as in
        # the generated config, so that runs side by side do not share one socket path.
        defaults.write_text("control_socket_disable = True\n")
        base = hello_memory(hello, config, requests, args.settle, tmp / "hello.log")
        plain = hello_memory(hello, defaults, requests, args.settle, tmp / "hello-defaults.log")

    print(f"  warm-up: {requests} requests each")
    print(f"  {'':44} {'processes':>9} {'RSS MB':>8} {'PSS MB':>8} {'PSS vs bare':>12}")
    for label, m in [("bare Flask hello, gunicorn's defaults", plain),
                     ("bare Flask hello, same config (baseline)", base), (f"{args.slug} (generated config)", app_mem)]:
        print(f"  {label:44} {m['processes']:9d} {m['rss_kb'] / 1024:8.1f} {m['pss_kb'] / 1024:8.1f} "
              f"{m['pss_kb'] / base['pss_kb']:12.2f}")
    print(f"  goal (<= 45 MB PSS in total): {'met' if app_mem['pss_kb'] / 1024 <= 45 else 'NOT met'}")


if __name__ == "__main__":
    main()
