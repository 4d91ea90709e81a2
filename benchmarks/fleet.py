"""scripts/bench fleet N: N verticals up at once on this box.

N synthetic verticals (benchmarks/synthetic.py) are generated with `vgen generate --all`,
migrated (`flask --app app migrate`, each with its own DATA_DIR), then all started at
once, each under gunicorn with its generated gunicorn.conf.py on its port from
ports.toml, as systemd would. The fleet is up when every /healthz answers 200; the
report gives the time that took, the PSS of all the apps together (each master and its
workers, from /proc/<pid>/smaps_rollup), and the drop in the kernel's MemAvailable.
Every app is stopped at the end, whatever happened.

The baseline, same run: one bare Flask "hello" app under gunicorn (the same config file)
started alone, the time it takes to answer and its PSS, times N.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import tempfile
import time
import tomllib
from pathlib import Path

from . import harness, synthetic


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench fleet")
    parser.add_argument("--count", type=int, default=220, help="verticals (default 220)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel generate/migrate jobs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the fleet (default 600)")
    args = parser.parse_args(argv)

    harness.header(f"scripts/bench fleet: {args.count} verticals")
    servers: list[harness.Gunicorn] = []
    with tempfile.TemporaryDirectory(prefix="vgen-bench-fleet-") as tmp:
        tmp = Path(tmp)
        try:
            root = synthetic.make_project(harness.source_repo(), tmp / "vgen", args.count)
            out = tmp / "apps"
            start = time.perf_counter()
            harness.vgen(root, "generate", "--all", "--out", str(out), "--jobs", str(args.jobs))
            generate_s = time.perf_counter() - start
            ports = tomllib.loads((root / "ports.toml").read_text())["ports"]
            busy = [f"{slug}:{port}" for slug, port in ports.items() if harness.port_in_use(port)]
            if busy:
                raise SystemExit(f"ports already in use, stop what listens there first: {', '.join(busy)}")

            apps = sorted(ports)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(lambda slug: harness.migrate(out / slug, tmp / "data" / slug), apps))
            migrate_s = time.perf_counter() - start

            # The baseline: one bare app, alone, before the fleet.
            hello = harness.write_hello(tmp / "hello")
            config = out / apps[0] / "gunicorn.conf.py"
            start = time.perf_counter()
            with harness.Gunicorn(hello, config=config, bind=f"127.0.0.1:{harness.free_port()}",
                                  app_uri="hello:app", log=tmp / "hello.log") as server:
                server.wait_ready(timeout=60)
                hello_up_s = time.perf_counter() - start
                time.sleep(2)
                hello_mem = harness.memory_kb(server.pid)

            available_before = mem_available_kb()
            start = time.perf_counter()
            for slug in apps:
                logs = tmp / "logs"
                logs.mkdir(exist_ok=True)
                servers.append(harness.Gunicorn(out / slug, config=out / slug / "gunicorn.conf.py",
                                                data_dir=tmp / "data" / slug, bind=f"127.0.0.1:{ports[slug]}",
                                                log=logs / f"{slug}.log"))
            launched_s = time.perf_counter() - start
            pending = {s.bind: s for s in servers}
            deadline = time.monotonic() + args.timeout
            while pending and time.monotonic() < deadline:
                for bind, server in list(pending.items()):
                    if server.proc.poll() is not None or harness.http_ok(server.url("/healthz"), timeout=5):
                        del pending[bind]
                time.sleep(0.2)
            up_s = time.perf_counter() - start
            time.sleep(5)  # settle
            green = sum(harness.http_ok(s.url("/healthz"), timeout=10) for s in servers)
            mems = [harness.memory_kb(s.pid) for s in servers]
            available_after = mem_available_kb()
            exited = [s.app_dir.name for s in servers if s.proc.poll() is not None]
        finally:
            for server in servers:  # signal them all first, then wait for each
                server.terminate()
            for server in servers:
                server.stop()

    pss = sum(m["pss_kb"] for m in mems) / 1024
    rss = sum(m["rss_kb"] for m in mems) / 1024
    n = len(servers)
    print(f"  generate --all: {generate_s:.1f}s; migrate all ({args.jobs} at a time): {migrate_s:.1f}s")
    print(f"  started {n} gunicorns in {launched_s:.1f}s; every /healthz answered after {up_s:.1f}s")
    print(f"  /healthz green after settling: {green}/{n}" + (f"; exited: {', '.join(exited)}" if exited else ""))
    print(f"  total PSS {pss:.0f} MB ({pss / n:.1f} MB per app), total RSS {rss:.0f} MB, "
          f"{sum(m['processes'] for m in mems)} processes")
    print(f"  MemAvailable dropped by {(available_before - available_after) / 1024:.0f} MB")
    print(f"  baseline, one bare Flask app alone: up in {hello_up_s:.2f}s, PSS {hello_mem['pss_kb'] / 1024:.1f} MB "
          f"(x{n} = {hello_mem['pss_kb'] / 1024 * n:.0f} MB); fleet PSS per app vs bare: "
          f"{pss / n / (hello_mem['pss_kb'] / 1024):.2f}x")
    print(f"  load average after: {harness.load_average()}")
    print(f"  goal ({args.count} up, all green): {'met' if green == n == args.count else 'NOT met'}")


if __name__ == "__main__":
    main()
