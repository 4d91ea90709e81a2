"""Verticals under real systemd, in a booted Debian 12 container (tests/hosts.py):

    scripts/bench idle [N]      N socket-activated verticals in one container: its memory
                                with all of them idle-stopped, against all N running
    scripts/bench coldstart     first connection to first byte of an idle-stopped
                                vertical (20 rounds: median, p95), against a bare Flask
                                app under the same socket activation and gunicorn config
    scripts/bench reload        failed requests of a steady client loop during 20
                                consecutive reloads, against the bare app's 20 reloads

The verticals go in the founder's way: `vgen generate`, `vgen install --root <the
container's root>`, then the printed vgen-activate inside. Timing and memory are read
inside the container (a small python3 script run there), so neither nsenter nor the
bridge is in the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from . import harness, synthetic

sys.path.insert(0, str(harness.REPO / "tests"))
import hosts  # noqa: E402  (the tests' container harness)

ROUNDS = 20

# Run inside the container: the PSS of every process (the whole host's memory in use).
PSS = r'''
import json, os
total = processes = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            processes += 1
    except OSError:
        pass
print(json.dumps({"pss_kb": total, "processes": processes}))
'''

# Run inside the container: for each (service, port), ROUNDS times: stop the service
# (its socket stays), then time a GET from connect to the first byte. Rounds are 2.5 s
# apart: systemd refuses a sixth start of a unit within 10 s (StartLimitBurst=5), as it
# should for a service in a crash loop.
COLD = r'''
import json, socket, subprocess, sys, time
targets, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for service, port, path in targets:
    times = []
    for _ in range(rounds):
        subprocess.run(["systemctl", "stop", service], check=True, capture_output=True)
        time.sleep(2.5)
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            first = s.recv(1)
            times.append(time.perf_counter() - start)
            assert first == b"H", first
            while s.recv(65536):
                pass
    out[service] = times
print(json.dumps(out))
'''

# Run inside the container: two threads GET a page in a loop while the service is
# reloaded `rounds` times; count the requests that did not get a 200.
RELOAD = r'''
import json, subprocess, sys, threading, time, urllib.request
service, port, path, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
stop = threading.Event(); failures = []; count = [0]
def loop():
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
                r.read()
                if r.status != 200:
                    failures.append(r.status)
        except Exception as e:
            failures.append(repr(e))
        count[0] += 1
threads = [threading.Thread(target=loop) for _ in range(2)]
for t in threads: t.start()
time.sleep(1)
start = time.perf_counter()
for _ in range(rounds):
    subprocess.run(["systemctl", "reload", service], check=True)
    time.sleep(0.5)
took = time.perf_counter() - start
time.sleep(1)
stop.set()
for t in threads: t.join()
print(json.dumps({"requests": count[0], "failures": len(failures), "examples": failures[:5], "seconds": took}))
'''


def inside(host, script: str, *args: str, timeout: float = 1800) -> dict:
    path = host.root / "root" / "bench.py"
    path.write_text(script)
    done = host.run(["python3", "/root/bench.py", *args], timeout=timeout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def activate(host, install_output: str) -> str:
    [command] = [line.strip() for line in install_output.splitlines() if "vgen-activate " in line]
    done = host.run(shlex.split(command), check=False, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"vgen-activate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def port_of(host, slug: str) -> int:
    text = (host.root / f"etc/systemd/system/{slug}.socket").read_text()
    return int(re.search(r"^ListenStream=127\.0\.0\.1:(\d+)$", text, re.M).group(1))


def add_hello(host, like: str, port: int) -> None:
    """A bare Flask app as a socket-activated service: the vertical `like`'s units and
    gunicorn.conf.py, with hello.py in place of the app and without the migrate unit."""
    home = host.root / "srv/vgen/hello/current"
    home.mkdir(parents=True, exist_ok=True)
    harness.write_hello(home)
    release = (host.root / f"srv/vgen/{like}/current").readlink()
    vertical = host.root / f"srv/vgen/{like}" / release
    (home / "gunicorn.conf.py").write_text((vertical / "gunicorn.conf.py").read_text())
    (home / ".venv").unlink(missing_ok=True)
    (home / ".venv").symlink_to((vertical / ".venv").readlink())
    units = host.root / "etc/systemd/system"
    socket_unit = (units / f"{like}.socket").read_text()
    socket_unit = re.sub(r"ListenStream=127\.0\.0\.1:\d+", f"ListenStream=127.0.0.1:{port}", socket_unit)
    (units / "hello.socket").write_text(socket_unit.replace(like, "hello"))
    service = (units / f"{like}.service").read_text()
    service = "\n".join(line for line in service.splitlines()
                        if not line.startswith(("Requires=", "After=", "ExecReload=/srv")))
    service = service.replace(like, "hello").replace("app:create_app()", "hello:app")
    (units / "hello.service").write_text(service + "\n")
    host.run(["systemctl", "daemon-reload"])
    host.run(["systemctl", "enable", "--now", "hello.socket"])


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


@contextmanager
def vertical_beside_hello(slug: str = "cheesemaking", hello_port: int = 8999):
    """A booted container with one vertical installed the founder's way and the bare
    Flask app beside it under the same socket activation; yields the host."""
    with tempfile.TemporaryDirectory(prefix="vgen-bench-") as tmp, hosts.boot_hosts(1, Path(tmp)) as fleet:
        host, tmp = fleet.hosts[0], Path(tmp)
        root = harness.clone_project(harness.source_repo(), tmp / "vgen")
        harness.vgen(root, "generate", slug, "--out", str(tmp / "apps"))
        activate(host, harness.vgen(root, "install", slug, "--root", str(host.root), "--out", str(tmp / "apps")).stdout)
        add_hello(host, slug, hello_port)
        yield host


def coldstart(args) -> None:
    harness.header("scripts/bench coldstart")
    with vertical_beside_hello() as host:
        targets = [["cheesemaking.service", port_of(host, "cheesemaking"), "/login"],
                   ["hello.service", 8999, "/"]]
        times = inside(host, COLD, json.dumps(targets), str(args.rounds))
    app, hello = times["cheesemaking.service"], times["hello.service"]
    for name, values in (("vertical (GET /login)", app), ("bare Flask (GET /)", hello)):
        print(f"  {name}: median {percentile(values, 50):.3f}s, p95 {percentile(values, 95):.3f}s, "
              f"max {max(values):.3f}s over {len(values)} cold starts")
    print(f"  vertical vs bare: median {percentile(app, 50) / percentile(hello, 50):.2f}x, "
          f"p95 {percentile(app, 95) / percentile(hello, 95):.2f}x")
    print(f"  goal (p95 under 1.5 s): {'met' if percentile(app, 95) < 1.5 else 'NOT met'}")


def reload(args) -> None:
    harness.header("scripts/bench reload")
    with vertical_beside_hello() as host:
        app = inside(host, RELOAD, "cheesemaking.service", str(port_of(host, "cheesemaking")), "/login",
                     str(args.rounds))
        hello = inside(host, RELOAD, "hello.service", "8999", "/", str(args.rounds))
    for name, r in (("vertical (GET /login)", app), ("bare Flask (GET /)", hello)):
        print(f"  {name}: {r['failures']} failed of {r['requests']} requests during {args.rounds} reloads "
              f"({r['seconds']:.1f}s)" + (f"; e.g. {r['examples']}" if r["examples"] else ""))
    print(f"  goal (0 failed): {'met' if app['failures'] == 0 else 'NOT met'}")


def idle(args) -> None:
    harness.header(f"scripts/bench idle: {args.count} verticals")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-") as tmp, hosts.boot_hosts(1, Path(tmp)) as fleet:
        host = fleet.hosts[0]
        tmp = Path(tmp)
        empty = inside(host, PSS)
        root = synthetic.make_project(harness.source_repo(), tmp / "vgen", args.count)
        start = time.perf_counter()
        harness.vgen(root, "generate", "--all", "--out", str(tmp / "apps"), "--jobs", "2")
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        out = harness.vgen(root, "install", "--all", "--root", str(host.root), "--out", str(tmp / "apps")).stdout
        install_s = time.perf_counter() - start
        start = time.perf_counter()
        activate(host, out)
        activate_s = time.perf_counter() - start
        slugs = sorted(p.stem for p in (root / "verticals").glob("*.toml"))
        time.sleep(2)
        idle_before = inside(host, PSS)

        def set_idle(seconds: int) -> None:
            for slug in slugs:
                (host.root / f"etc/vgen/{slug}.env").write_text(f"IDLE_STOP_SECONDS={seconds}\n")

        # Every vertical running at once, as without scale to zero.
        set_idle(0)
        start = time.perf_counter()
        host.run(["systemctl", "start", *[f"{slug}.service" for slug in slugs]], timeout=1800)
        wait = textwrap.dedent(f"""
            import json, time, urllib.request
            ports = {json.dumps([port_of(host, s) for s in slugs])}
            for port in ports:
                urllib.request.urlopen(f"http://127.0.0.1:{{port}}/healthz", timeout=120).read()
            print(json.dumps({{}}))
        """)
        inside(host, wait)
        up_s = time.perf_counter() - start
        time.sleep(5)
        running = inside(host, PSS)

        # Then each with a short idle time (the default is 900 s): they stop by themselves.
        set_idle(args.idle_seconds)
        host.run(["systemctl", "restart", *[f"{slug}.service" for slug in slugs]], timeout=1800)
        start = time.perf_counter()
        deadline = time.monotonic() + args.idle_seconds + 300
        while time.monotonic() < deadline:
            active = host.run(["systemctl", "list-units", "--state=active", "--no-legend", "--plain",
                               "vert*.service"]).stdout.split()
            if not [u for u in active if u.endswith(".service") and not u.endswith(("-migrate.service", "-backup.service"))]:
                break
            time.sleep(2)
        stopped_s = time.perf_counter() - start
        time.sleep(2)
        idle_after = inside(host, PSS)

    n = len(slugs)
    mb = lambda r: r["pss_kb"] / 1024  # noqa: E731
    print(f"  generate --all: {generate_s:.1f}s; vgen install --all: {install_s:.1f}s; "
          f"vgen-activate ({n} verticals): {activate_s:.1f}s")
    print(f"  container alone: {mb(empty):.0f} MB PSS ({empty['processes']} processes)")
    print(f"  {n} installed, idle (never started): {mb(idle_before):.0f} MB ({idle_before['processes']} processes)")
    print(f"  {n} running (started together, all /healthz 200 after {up_s:.1f}s): {mb(running):.0f} MB "
          f"({running['processes']} processes; {(mb(running) - mb(empty)) / n:.1f} MB per vertical)")
    print(f"  {n} idle-stopped again ({stopped_s:.0f}s after IDLE_STOP_SECONDS={args.idle_seconds}): "
          f"{mb(idle_after):.0f} MB ({idle_after['processes']} processes)")
    ratio = mb(running) / mb(idle_after)
    print(f"  running vs idle: {ratio:.0f}x less memory idle; goal (20x): {'met' if ratio >= 20 else 'NOT met'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench idle|coldstart|reload")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("idle")
    p.add_argument("count", type=int, nargs="?", default=220)
    p.add_argument("--idle-seconds", type=int, default=20)
    p.set_defaults(run=idle)
    for name, run in (("coldstart", coldstart), ("reload", reload)):
        p = sub.add_parser(name)
        p.add_argument("--rounds", type=int, default=ROUNDS)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
