"""What the serving benchmarks share: generating an app, running it under gunicorn,
logging a user in, filling the database, loading it with wrk and reading memory.

Every process started here is started in its own session and stopped by its process
group, always (context managers), so a failed run leaves nothing listening.
"""

from __future__ import annotations

import contextlib
import html.parser
import http.cookiejar
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Under load, the server runs on core 0 and wrk on core 1 (taskset), so the two never
# take turns on one core: the figures then measure the server's own cost per request.
SERVER_CPUS, CLIENT_CPUS = ("0", "1") if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else (None, None)

# A bare Flask app: the baseline the generated apps are measured against.
HELLO = '''from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, World!"


@app.route("/healthz")
def healthz():
    return {"status": "ok"}
'''

# wrk prints its summary as one JSON line (latencies in microseconds).
WRK_REPORT = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
'''


def source_repo() -> Path:
    """The template repository the benchmarks clone: this one, or $VGEN_BENCH_REPO.

    vgen renders the repository's HEAD commit, so uncommitted template changes are not
    measured; say so rather than measure something else in silence.
    """
    root = Path(os.environ.get("VGEN_BENCH_REPO", REPO)).resolve()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "template", "copier.yml"],
                           cwd=root, capture_output=True, text=True).stdout.strip()
    if dirty:
        print(f"note: {root} has uncommitted template changes; benchmarks render its HEAD commit",
              file=sys.stderr)
    return root


def clone_project(repo: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--local", str(repo), str(dest)], check=True)
    return dest


def vgen(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([PYTHON, "-m", "generator.cli", "--project", str(root), *args],
                            capture_output=True, text=True, cwd=cwd or REPO)
    if result.returncode != 0:
        raise SystemExit(f"vgen {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def migrate(app_dir: Path, data_dir: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "flask", "--app", "app", "migrate"], cwd=app_dir,
                            env={**os.environ, "DATA_DIR": str(data_dir)}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"migrate failed in {app_dir}:\n{result.stdout}\n{result.stderr}")


def spec_slug(spec: Path) -> str:
    """The slug a spec file names, for a vertical that is not in the repository."""
    try:
        return tomllib.loads(spec.read_text())["slug"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise SystemExit(f"{spec}: not a vertical spec with a slug ({e})")


def generated_app(tmp: Path, slug: str, spec: Path | None = None) -> tuple[Path, Path]:
    """Clone the template repository into tmp, generate `slug`, migrate its database.

    `spec`, a spec file from outside the repository, is added to the clone's verticals
    first. Returns the app folder and its DATA_DIR.
    """
    root = clone_project(source_repo(), tmp / "vgen")
    if spec is not None:
        shutil.copyfile(spec, root / "verticals" / f"{slug}.toml")
    vgen(root, "generate", slug, "--out", str(tmp / "apps"))
    app_dir, data = tmp / "apps" / slug, tmp / "data"
    migrate(app_dir, data)
    return app_dir, data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_hello(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "hello.py").write_text(HELLO)
    return dest


class Gunicorn:
    """One gunicorn master (and its workers) in its own process group."""

    def __init__(self, app_dir: Path, *, config: Path, data_dir: Path | None = None, bind: str | None = None,
                 app_uri: str | None = None, log: Path | None = None, env: dict | None = None,
                 cpus: str | None = None):
        self.app_dir, self.config, self.bind = Path(app_dir), Path(config), bind
        self.log = log or Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
        args = [PYTHON, "-m", "gunicorn", "--config", str(self.config)]
        if cpus:
            args = ["taskset", "-c", cpus, *args]
        if bind:
            args += ["--bind", bind]
        if app_uri:
            args.append(app_uri)  # the command line's app wins over the config's wsgi_app
        full_env = {**os.environ, **(env or {})}
        if data_dir is not None:
            full_env["DATA_DIR"] = str(data_dir)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, cwd=self.app_dir, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/") -> str:
        return f"http://{self.bind}{path}"

    def wait_ready(self, path: str = "/healthz", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn in {self.app_dir} exited:\n{self.log.read_text()[-3000:]}")
            if http_ok(self.url(path)):
                return
            time.sleep(0.05)
        raise SystemExit(f"gunicorn in {self.app_dir} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def terminate(self) -> None:
        """Ask the master to stop (gunicorn stops its workers); see stop()."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers left behind by a killed master share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def http_ok(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


# ---------------------------------------------------------------------------- memory

def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def memory_kb(pid: int) -> dict:
    """RSS and PSS (kB) of a process and all its descendants, from smaps_rollup."""
    rss = pss = 0
    pids = process_tree(pid)
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss += int(rest.split()[0])
                elif key == "Pss":
                    pss += int(rest.split()[0])
    return {"rss_kb": rss, "pss_kb": pss, "processes": len(pids)}


# ---------------------------------------------------------------------------- a logged-in user

class _Inputs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.values = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name"):
            self.values[attrs["name"]] = attrs.get("value") or ""


def form_inputs(page: str) -> dict:
    parser = _Inputs()
    parser.feed(page)
    return parser.values


class Browser:
    """urllib with cookies: enough to sign up and read a CSRF token."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def post(self, path: str, data: dict) -> str:
        body = urllib.parse.urlencode(data).encode()
        with self.opener.open(self.base + path, body, timeout=30) as response:
            return response.read().decode()

    def csrf_token(self, path: str) -> str:
        return form_inputs(self.get(path))["csrf_token"]

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name)


def mailed_link(data_dir: Path, to: str) -> str:
    """The path of the link in the newest mail to `to` in the app's outbox
    (DATA_DIR/outbox, where mail goes without SMTP_HOST), or "" when there is none."""
    import email
    import email.policy
    import re

    for path in sorted((Path(data_dir) / "outbox").glob("*.eml"), reverse=True):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == to:
            return urllib.parse.urlsplit(re.search(r"https?://\S+", message.get_content()).group()).path
    return ""


def sign_up(base: str, slug: str, data_dir: Path, email: str = "bench@example.com",
            password: str = "bench-password") -> Browser:
    """Sign up, and open the link the app mailed to finish it (when it verifies emails)."""
    browser = Browser(base)
    token = browser.csrf_token("/signup")
    browser.post("/signup", {"csrf_token": token, "account": "Bench", "email": email,
                             "password": password, "confirm": password})
    link = mailed_link(data_dir, email)
    if link:
        browser.post(link, {"csrf_token": browser.csrf_token(link)})
    if not any(c.name == f"{slug}_session" for c in browser.jar):
        raise SystemExit("sign-up did not log in")
    return browser


# ---------------------------------------------------------------------------- records

def answers(app_dir: Path) -> dict:
    return yaml.safe_load((app_dir / ".copier-answers.yml").read_text())


def list_entity(app_dir: Path) -> dict:
    """The entity whose list page the benchmarks load: the one with the most fields
    among those with a search."""
    entities = answers(app_dir)["entities"]
    return max((e for e in entities if e.get("search")), key=lambda e: len(e["fields"]))


def _value(field: dict, i: int, rng: random.Random, ids: dict):
    """A stored value for `field` (the app's storage conventions) in record number i."""
    kind = field["type"]
    if kind == "string":
        return f"{field['name']} {i:05d}"[: field.get("max_length") or 200]
    if kind == "text":
        return f"Note {i}: " + " ".join(rng.choice(["milk", "rind", "salt", "press", "turn", "wash", "cave"])
                                         for _ in range(12))
    if kind == "integer":
        low = int(float(field["min"])) if field.get("min") is not None else 0
        high = int(float(field["max"])) if field.get("max") is not None else low + 1000
        return rng.randint(low, high)
    if kind == "decimal":
        scale = 10 ** field["places"]
        low = float(field["min"]) if field.get("min") is not None else 0.0
        high = float(field["max"]) if field.get("max") is not None else low + 1000
        return rng.randint(int(low * scale), int(high * scale))
    if kind == "boolean":
        return i % 2
    if kind == "date":
        return (date(2024, 1, 1) + timedelta(days=i % 700)).isoformat()
    if kind == "datetime":
        return (datetime(2024, 1, 1, 8) + timedelta(minutes=37 * i)).strftime("%Y-%m-%dT%H:%M:%S")
    if kind == "email":
        return f"person{i}@example.com"
    if kind == "url":
        return f"https://example.com/{i}"
    if kind == "choice":
        return field["choices"][i % len(field["choices"])]
    if kind == "ref":
        targets = ids.get(field["to"])
        return rng.choice(targets) if targets else None
    raise ValueError(kind)


def fill(app_dir: Path, database: Path, account_id: int, per_entity: int) -> dict:
    """Insert `per_entity` records of every entity for one account, straight into SQLite.

    Referenced entities are filled first so refs point at real records; a ref that
    cannot be filled yet (a cycle, a self-reference) is left empty where allowed.
    """
    entities = answers(app_dir)["entities"]
    rng = random.Random(7)
    ids: dict[str, list[int]] = {}
    order, pending = [], list(entities)
    while pending:
        filled = {e["name"] for e in order}
        for entity in pending:
            targets = {f["to"] for f in entity["fields"] if f["type"] == "ref" and f["to"] != entity["name"]}
            if targets <= filled:
                break
        else:
            entity = pending[0]  # a cycle: its refs to entities not filled yet stay empty
        order.append(entity)
        pending.remove(entity)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    conn = sqlite3.connect(database)
    with conn:
        for entity in order:
            names = [f["name"] for f in entity["fields"]]
            columns = ", ".join(f'"{n}"' for n in ["account_id", *names, "created_at", "updated_at"])
            marks = ", ".join("?" * (len(names) + 3))
            sql = f'INSERT INTO "{entity["name"]}" ({columns}) VALUES ({marks})'
            ids[entity["name"]] = []
            for i in range(per_entity):
                row = [_value(f, i, rng, ids) for f in entity["fields"]]
                ids[entity["name"]].append(conn.execute(sql, [account_id, *row, now, now]).lastrowid)
    conn.close()
    return {name: len(v) for name, v in ids.items()}


# ---------------------------------------------------------------------------- load

def wrk(url: str, *, connections: int, seconds: float, headers: dict | None = None,
        script: str | None = None, threads: int = 1) -> dict:
    """Run wrk against url; requests/s, p50/p99 (ms) and error counts."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write((script or "") + WRK_REPORT)
    try:
        args = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{seconds:g}s",
                "--timeout", "10s", "-s", f.name]
        if CLIENT_CPUS:
            args = ["taskset", "-c", CLIENT_CPUS, *args]
        for key, value in (headers or {}).items():
            args += ["-H", f"{key}: {value}"]
        result = subprocess.run(args + [url], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"wrk failed: {result.stderr}")
        out = result.stdout
    finally:
        os.unlink(f.name)
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    data = json.loads(line[5:])
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return {"rps": data["requests"] / (data["duration_us"] / 1e6), "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000, "max_ms": data["max_us"] / 1000, "requests": data["requests"],
            "errors": errors}


def pinning() -> str:
    if SERVER_CPUS:
        return f"gunicorn on CPU {SERVER_CPUS}, wrk on CPU {CLIENT_CPUS}"
    return "gunicorn and wrk not pinned (one core)"


def median_run(runs: list[dict]) -> dict:
    """Each figure of several wrk runs of one page: the median; errors: the sum."""
    def median(values):
        values = sorted(values)
        return values[len(values) // 2]
    return {"rps": median([r["rps"] for r in runs]), "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]), "errors": sum(r["errors"] for r in runs)}


def gunicorn_env() -> str:
    """The GUNICORN_* overrides of the generated config in this environment, if any, and
    PAGE_CACHE (PAGE_CACHE=0: the app renders every page, see the app's pages.py)."""
    overrides = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                         if k.startswith("GUNICORN_") or k == "PAGE_CACHE")
    return f", with {overrides}" if overrides else ""


# ---------------------------------------------------------------------------- the machine

def machine() -> str:
    mem_kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")).split()[1])
    from importlib.metadata import version

    return (f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"Flask {version('flask')}, gunicorn {version('gunicorn')}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def header(title: str) -> None:
    print(f"{title} - {datetime.now().strftime('%Y-%m-%d %H:%M')}")
    print(f"  machine: {machine()}")
    print(f"  load average before: {load_average()}")
