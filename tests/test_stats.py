"""vgen stats: traffic per vertical from nginx's access logs.

The logs are written here line by line in nginx's combined format, with times relative
to one clock hour H (the hour `now` falls in), so that every figure is known exactly:
the current log, a rotated `.1`, gzipped `.2.gz` and `.3.gz` (the last written to before
the period), malformed lines, bots, 5xx, one address with two browsers, lines before the
period and after now, and time zones other than UTC. Then a real nginx writes a log for
the generated site, and the page is opened in Chromium.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import cli, stats
from generator.errors import VgenError

from conftest import ROOT

DAY = 86400
NOW = dt.datetime(2024, 3, 15, 0, 0, tzinfo=dt.UTC)  # for the library: H == NOW exactly

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0 Safari/537.36"
SAFARI = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 Version/17.3 Safari/604.1"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def hour_of(now: dt.datetime) -> int:
    return int(now.timestamp()) // 3600 * 3600


def line(addr: str, when: int, request: str, status: int, agent: str, zone: str = "+0000", extra: str = "") -> str:
    """One line as nginx's combined format writes it ($time_local in the given zone)."""
    sign = 1 if zone[0] == "+" else -1
    offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
    local = dt.datetime.fromtimestamp(when, dt.timezone(offset))
    stamp = local.strftime("%d/%b/%Y:%H:%M:%S ") + zone
    return f'{addr} - - [{stamp}] "{request}" {status} 512 "-" "{agent}"{extra}\n'


def write_logs(folder: Path, now: dt.datetime) -> None:
    """The logs of four verticals, and files that are no vertical's log."""
    h = hour_of(now)

    def at(days_ago, hour, minute, second=0):  # before H, in the clock hour given
        return h - days_ago * DAY + hour * 3600 + minute * 60 + second

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cheesemaking.access.log").write_text("".join([
        line("1.1.1.1", at(1, 10, 5), "GET / HTTP/1.1", 200, FIREFOX),
        line("1.1.1.1", at(1, 10, 20), "GET /batches/?q=brie HTTP/1.1", 502, FIREFOX),
        line("1.1.1.1", at(1, 10, 59), "GET /batches/ HTTP/2.0", 200, FIREFOX),
        line("1.1.1.1", at(1, 10, 30), "GET /batches/ HTTP/1.1", 200, CHROME),  # same address, another browser
        line("1.1.1.1", at(1, 11, 10), "GET /login HTTP/1.1", 404, CHROME),
        line("2.2.2.2", at(1, 12, 0), "GET / HTTP/1.1", 200, SAFARI, extra=" 0.004 0.003"),  # a superset format
        line("66.249.66.1", at(1, 9, 0), "GET / HTTP/1.1", 200, GOOGLEBOT),
        line("66.249.66.1", at(1, 9, 1), "GET /robots.txt HTTP/1.1", 500, GOOGLEBOT),
        line("127.0.0.1", at(1, 13, 0), "GET /healthz HTTP/1.1", 200, "curl/8.5.0"),
        line("9.9.9.9", at(1, 14, 0), "\\x16\\x03\\x01", 400, "-"),  # no user agent: a bot
        line("1.1.1.1", h + 2 * 3600, "GET / HTTP/1.1", 200, FIREFOX),  # after now
        "garbage\n",
        re.sub(r"/[A-Z][a-z]{2}/", "/Foo/", line("1.1.1.1", at(1, 15, 0), "GET / HTTP/1.1", 200, FIREFOX)),
        re.sub(r":\d\d:(\d\d:\d\d) ", r":25:\1 ", line("1.1.1.1", at(1, 15, 0), "GET / HTTP/1.1", 200, FIREFOX)),
        line("1.1.1.1", at(1, 16, 0), "GET / HTTP/1.1", 200, FIREFOX)[:60] + "\n",  # cut short
    ]))
    (folder / "cheesemaking.access.log.1").write_text("".join(
        line("3.3.3.3", at(3, 9, minute, second), "GET /batches/ HTTP/1.1", 200, FIREFOX)
        for minute, second in [(0, 0), (10, 0), (20, 0), (30, 0), (59, 59)]
    ))
    with gzip.open(folder / "cheesemaking.access.log.2.gz", "wt") as f:
        f.write(line("4.4.4.4", at(7, 1, 0), "GET / HTTP/1.1", 503, FIREFOX))  # the period's first hour
        f.write(line("4.4.4.4", at(8, 23, 0), "GET / HTTP/1.1", 200, FIREFOX))  # an hour before it
        f.write(line("4.4.4.4", at(20, 0, 0), "GET / HTTP/1.1", 200, FIREFOX))
    old = folder / "cheesemaking.access.log.3.gz"
    with gzip.open(old, "wt") as f:
        f.write(line("5.5.5.5", at(12, 5, 0), "GET / HTTP/1.1", 200, FIREFOX))
        f.write("a malformed line in a file too old to read\n")
    os.utime(old, (at(11, 0, 0), at(11, 0, 0)))

    # The clock hour as the log writes it: +0530's hours start at :30 UTC.
    (folder / "honeybees.access.log.1").write_text("".join([
        line("5.5.5.5", at(2, 23, 30), "GET /hives/ HTTP/1.1", 200, FIREFOX, zone="+0200"),
        line("5.5.5.5", at(1, 0, 30), "GET /hives/ HTTP/1.1", 200, FIREFOX, zone="-0700"),
        line("5.5.5.5", at(2, 5, 45), "GET /hives/ HTTP/1.1", 200, FIREFOX, zone="+0530"),
    ]))
    (folder / "retired.access.log").write_text(line("6.6.6.6", at(1, 8, 0), "GET / HTTP/1.1", 200, FIREFOX))
    # No vertical's: nginx's own log, error logs, names that break the slug rule.
    for name in ("access.log", "error.log", "cheesemaking.error.log", "Bad_Slug.access.log", "x.access.log"):
        (folder / name).write_text(line("7.7.7.7", at(1, 8, 0), "GET / HTTP/1.1", 200, FIREFOX))


def make_project(root: Path, slugs=("cheesemaking", "honeybees", "quiet")) -> Path:
    """A project as find_project sees one: copier.yml and verticals/<slug>.toml."""
    (root / "verticals").mkdir(parents=True)
    (root / "copier.yml").write_text("_subdirectory: template\n")
    for slug in slugs:
        (root / "verticals" / f"{slug}.toml").write_text(f'slug = "{slug}"\nname = "{slug.title()}"\n')
    return root


CHEESEMAKING = {
    "visitors": 5,  # 1.1.1.1 twice (Firefox, Chrome), 2.2.2.2, 3.3.3.3, 4.4.4.4
    "requests": 12,  # 6 now, 5 in .1, 1 in .2.gz
    "peak_hour_requests": 5,  # 3.3.3.3's hour; 1.1.1.1's 10:00 has 4
    "errors": 3,  # 502, Googlebot's 500, 503
    "bots": 4,  # Googlebot twice, curl, no user agent
    "malformed": 4,  # not .3.gz's: that file is too old to read
}
HONEYBEES = {"visitors": 1, "requests": 3, "peak_hour_requests": 1, "errors": 0, "bots": 0, "malformed": 0}
RETIRED = {"visitors": 1, "requests": 1, "peak_hour_requests": 1, "errors": 0, "bots": 0, "malformed": 0}
QUIET = {"visitors": 0, "requests": 0, "peak_hour_requests": 0, "errors": 0, "bots": 0, "malformed": 0}

TEXT_7_DAYS = [
    ("cheesemaking: 5 unique visitors, 12 requests, peak 5 requests in an hour, 18.8% errors "
     "(4 requests from bots, 4 malformed lines)"),
    "honeybees: 1 unique visitor, 3 requests, peak 1 request in an hour, 0% errors",
    "retired (no spec in verticals/): 1 unique visitor, 1 request, peak 1 request in an hour, 0% errors",
    "quiet: no access log",
]


def figures(entry: dict) -> dict:
    return {key: entry[key] for key in QUIET}


def test_figures_are_exact(tmp_path):
    write_logs(tmp_path / "logs", NOW)
    report = stats.stats(tmp_path / "logs", ["cheesemaking", "honeybees", "quiet"], days=7, now=NOW)
    got = report.as_json()
    assert list(got) == ["cheesemaking", "honeybees", "retired", "quiet"]  # most requests first
    assert figures(got["cheesemaking"]) == CHEESEMAKING
    assert figures(got["honeybees"]) == HONEYBEES
    assert figures(got["retired"]) == RETIRED
    assert figures(got["quiet"]) == QUIET

    cheese = got["cheesemaking"]
    assert cheese["peak_hour"] == "2024-03-12T09:00:00Z"
    assert cheese["daily"] == [1, 0, 0, 0, 5, 0, 6]  # per 24 hours from NOW - 7 days
    assert cheese["top_paths"] == [{"path": "/batches/", "requests": 8}, {"path": "/", "requests": 3},
                                   {"path": "/login", "requests": 1}]
    assert cheese["logs"] == ["cheesemaking.access.log", "cheesemaking.access.log.1",
                              "cheesemaking.access.log.2.gz", "cheesemaking.access.log.3.gz"]
    assert cheese["spec"] is True and got["retired"]["spec"] is False
    # Three different clock hours, the earliest first: 11:15 at +0530 is in the hour from 05:30 UTC.
    assert got["honeybees"]["peak_hour"] == "2024-03-13T05:30:00Z"
    assert got["honeybees"]["daily"] == [0, 0, 0, 0, 0, 2, 1]
    assert got["quiet"]["logs"] == [] and got["quiet"]["peak_hour"] is None

    assert stats.text_lines(report)[1:] == TEXT_7_DAYS
    assert stats.text_lines(report)[0] == (
        f"Traffic over the last 7 days (2024-03-08 00:00 to 2024-03-15 00:00 UTC), from {tmp_path / 'logs'}:")


def test_the_period_is_the_last_days_up_to_now_both_ends_included(tmp_path):
    since = int(NOW.timestamp()) - 2 * DAY
    (tmp_path / "shop.access.log").write_text("".join(
        line("1.1.1.1", when, "GET / HTTP/1.1", 200, f"{FIREFOX} {when}")
        for when in (since - 1, since, since + DAY, int(NOW.timestamp()), int(NOW.timestamp()) + 1)
    ))
    shop = stats.stats(tmp_path, days=2, now=NOW).verticals[0]
    assert (shop.requests, shop.visitors, shop.daily) == (3, 3, [1, 2])
    assert shop.has_spec is None  # no project asked: only the logs found


@pytest.mark.parametrize("agent", [
    GOOGLEBOT, "Mozilla/5.0 (compatible; bingbot/2.0)", "Baiduspider", "ia_archiver crawler",
    "Mozilla/5.0 (compatible; Yahoo! Slurp)", "curl/8.5.0", "Wget/1.21.4", "python-requests/2.31",
    "Python-urllib/3.11", "Go-http-client/1.1", "Mozilla/5.0 HeadlessChrome/122.0", "-", "",
])
def test_bots(agent):
    assert stats.BOT_RE.search(agent)


@pytest.mark.parametrize("agent", [FIREFOX, CHROME, SAFARI, "Mozilla/5.0 (Android 14; Mobile) Firefox/123.0"])
def test_browsers_are_not_bots(agent):
    assert not stats.BOT_RE.search(agent)


def run(*args, project: Path | None = None):
    prefix = ["--project", str(project)] if project else []
    return CliRunner().invoke(cli.main, [*prefix, "stats", *args])


def real_vgen(*args) -> subprocess.CompletedProcess:
    """The vgen command of this tree, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "generator.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)


@pytest.fixture
def logs(tmp_path) -> Path:
    """The logs as of the real current time (the CLI has no `now` to inject)."""
    write_logs(tmp_path / "logs", dt.datetime.now(dt.UTC))
    return tmp_path / "logs"


def test_cli_text_and_json(logs, tmp_path):
    project = make_project(tmp_path / "project")
    shown = run("--log-dir", str(logs), project=project)
    assert shown.exit_code == 0, shown.output
    heading, *lines = shown.output.splitlines()
    assert heading.startswith("Traffic over the last 7 days (") and heading.endswith(f"UTC), from {logs}:")
    assert lines == TEXT_7_DAYS

    result = run("--log-dir", str(logs), "--json", project=project)
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)  # nothing but the JSON
    assert {slug: figures(entry) for slug, entry in got.items()} == {
        "cheesemaking": CHEESEMAKING, "honeybees": HONEYBEES, "retired": RETIRED, "quiet": QUIET}

    # The last two days: only yesterday's lines (malformed lines count in every file read).
    two = json.loads(run("--log-dir", str(logs), "--json", "--days", "2", project=project).output)
    assert figures(two["cheesemaking"]) == {"visitors": 3, "requests": 6, "peak_hour_requests": 4, "errors": 2,
                                            "bots": 4, "malformed": 4}
    assert len(two["cheesemaking"]["daily"]) == 2


def test_the_real_cli_in_a_subprocess(logs, tmp_path):
    project = make_project(tmp_path / "project")
    done = real_vgen("--project", str(project), "stats", "--log-dir", str(logs), "--json")
    assert done.returncode == 0, done.stderr
    assert figures(json.loads(done.stdout)["cheesemaking"]) == CHEESEMAKING


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "Error: --days 0: must be from 1 to 366"),
    (["--days", "367"], "Error: --days 367: must be from 1 to 366"),
    (["--days", "a week"], "Error: --days a week: not a whole number of days"),
    (["--log-dir", "{tmp}/missing"], "Error: --log-dir {tmp}/missing: no such folder"),
    (["--log-dir", "{tmp}/file"], "Error: --log-dir {tmp}/file: not a folder"),
    (["--html", "{tmp}/missing/page.html"], "Error: --html {tmp}/missing/page.html: no folder {tmp}/missing"),
])
def test_a_bad_option_is_one_line_naming_it(tmp_path, args, message):
    (tmp_path / "logs").mkdir()
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run("--log-dir", str(tmp_path / "logs"), *args, project=make_project(tmp_path / "project"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [message.format(tmp=tmp_path)]
    assert "Traceback" not in result.output


def damaged_gzip(path: Path) -> None:
    whole = gzip.compress("".join(f"{n} {n * n}\n" for n in range(5000)).encode())
    path.write_bytes(whole[: len(whole) // 2])  # cut short, as a crash mid-compression leaves it


def not_gzip(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b" + b"not gzip at all")


def dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "gone")


@pytest.mark.parametrize("damage", [damaged_gzip, not_gzip, dangling_link])
def test_an_unreadable_log_is_one_line_naming_it(logs, tmp_path, damage):
    bad = logs / "honeybees.access.log.2.gz"
    damage(bad)
    result = run("--log-dir", str(logs), project=make_project(tmp_path / "project"))
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: "), lines
    assert "Traceback" not in result.output


def test_the_library_raises_vgen_errors(tmp_path):
    with pytest.raises(VgenError, match="--days 0"):
        stats.stats(tmp_path, days=0)
    with pytest.raises(VgenError, match="no such folder"):
        stats.stats(tmp_path / "nowhere")


HOSTILE_PATH = "/<script>alert(1)</script>"
HOSTILE_AGENT = "Mozilla/5.0 <img src=x onerror=alert(2)> Firefox/1"


def write_hostile(folder: Path, now: dt.datetime) -> None:
    h = hour_of(now)
    with open(folder / "cheesemaking.access.log", "a") as f:
        f.write(line("8.8.8.8", h - 3600, f"GET {HOSTILE_PATH} HTTP/1.1", 200, HOSTILE_AGENT))
        f.write(line("8.8.8.8", h - 3500, f"GET {HOSTILE_PATH} HTTP/1.1", 200, HOSTILE_AGENT))
        # nginx writes a '"' as \\x22: it stays as it was written.
        f.write(line("8.8.8.8", h - 3400, 'GET /\\x22><b>x</b> HTTP/1.1', 200, HOSTILE_AGENT))


def test_html_page_is_self_contained_and_escapes_what_visitors_sent(logs, tmp_path):
    write_hostile(logs, dt.datetime.now(dt.UTC))
    page = tmp_path / "fleet.html"
    page.write_text("the old page")
    result = run("--log-dir", str(logs), "--html", str(page), project=make_project(tmp_path / "project"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"Wrote {page}"
    html = page.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "/&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html and "src=" not in html  # nothing fetched
    assert html.count("<svg ") == 3  # one chart per vertical with a log; quiet has none
    assert html.count("<article ") == 4
    assert "No access log." in html
    assert "24 hours from" in html and "<title>" in html


def test_json_and_html_together_print_only_the_json(logs, tmp_path):
    page = tmp_path / "fleet.html"
    result = run("--log-dir", str(logs), "--json", "--html", str(page), project=make_project(tmp_path / "project"))
    assert result.exit_code == 0
    assert set(json.loads(result.output)) == {"cheesemaking", "honeybees", "retired", "quiet"}
    assert page.read_text().startswith("<!doctype html>")


# --- real nginx, real Chromium -------------------------------------------------------


class Upstream(BaseHTTPRequestHandler):
    """A stand-in for the app: /boom answers 500, anything else 200."""

    def do_GET(self):
        status = 500 if self.path == "/boom" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def wait_listening(port: int, timeout: float = 30) -> None:
    """nginx accepts connections (a connection without a request is never logged)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nginx does not listen on {port}")
        time.sleep(0.1)


@pytest.mark.slow
def test_stats_of_a_log_real_nginx_wrote(template_repo, tmp_path, upstream):
    from conftest import render_app, sample_answers
    from test_deploy import nginx_serving

    app = render_app(template_repo, sample_answers(), tmp_path / "sample")
    sent = [(FIREFOX, "/"), (FIREFOX, "/batches/?q=a"), (FIREFOX, "/boom"), (CHROME, "/"),
            (GOOGLEBOT, "/"), ("curl/8.5.0", "/healthz")]
    started = time.time()
    with nginx_serving(app, tmp_path / "nginx", upstream) as listen:
        wait_listening(listen)
        for agent, path in sent:
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
            conn.request("GET", path, headers={"Host": "sample.example.com", "User-Agent": agent})
            response = conn.getresponse()
            response.read()
            conn.close()
            assert response.status == (500 if path == "/boom" else 200)
    same_hour = int(started) // 3600 == int(time.time()) // 3600
    logs = tmp_path / "nginx" / "logs"
    assert (logs / "sample.access.log").exists()

    done = real_vgen("--project", str(template_repo), "stats", "--log-dir", str(logs), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    sample = got["sample"]  # nginx's own access.log is no vertical's
    assert figures(sample) | {"peak_hour_requests": None} == {
        "visitors": 2, "requests": 4, "peak_hour_requests": None, "errors": 1, "bots": 2, "malformed": 0}
    assert sample["peak_hour_requests"] == 4 if same_hour else 1 <= sample["peak_hour_requests"] <= 4
    assert sample["spec"] is False  # the sample answers are no vertical of the project
    assert set(got) == {"sample", *(p.stem for p in (template_repo / "verticals").glob("*.toml"))}


@pytest.mark.slow
def test_html_page_in_chromium(logs, tmp_path):
    from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, sync_playwright

    write_hostile(logs, dt.datetime.now(dt.UTC))
    page_file = tmp_path / "fleet.html"
    result = run("--log-dir", str(logs), "--html", str(page_file), project=make_project(tmp_path / "project"))
    assert result.exit_code == 0, result.output
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, java_script_enabled=True)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on("request", lambda r: fetched.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            assert page.title().startswith("Traffic per vertical")
            charts = page.get_by_role("img")
            assert charts.count() == 3
            assert page.locator("#vertical-cheesemaking svg g").count() == 7  # one bar per day
            assert page.locator("#vertical-cheesemaking dd").nth(1).inner_text() == "15"  # 12 + 3 hostile
            assert HOSTILE_PATH in page.locator("#vertical-cheesemaking ol").inner_text()
            page.screenshot(path=ARTIFACTS / "stats.png", full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
            page.screenshot(path=ARTIFACTS / "stats-phone.png", full_page=True)
        finally:
            browser.close()
    assert problems == [], problems
    assert fetched == [page_file.as_uri()], fetched
