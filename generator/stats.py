"""`vgen stats`: traffic per vertical, read from nginx's per-vertical access logs.

Each vertical's nginx site logs to ``<slug>.access.log`` in nginx's ``combined`` format
(template/deploy/[[ slug ]].nginx.conf.jinja); logrotate leaves ``.1`` and gzipped
``.2.gz``... beside it (``-YYYYMMDD`` with ``dateext`` too). This module reads them all.

Why a small parser and not GoAccess: the figures are few (visitors, requests, peak hour,
server errors, bots) and the contract fixes their exact meaning and a JSON shape keyed by
slug; a parser of under a hundred lines of the standard library (re, gzip) gives exactly
those figures, testably, on any machine where vgen runs. GoAccess would be one more
Debian package on every host and on the founder's machine, run once per vertical, whose
JSON differs between versions and whose notions (a "visitor" is an address, date and
agent; its crawler list is its own) are not ours: we would still translate its output.
A million lines take about four seconds of one core, plenty for a fleet of small apps.

What is counted, per vertical, over the ``days`` * 24 hours up to ``now``:

- ``requests``: the log lines of the period that are not from bots;
- ``visitors``: distinct client address + user agent pairs among those requests;
- ``peak_hour_requests``: the most requests (bots excluded) in one clock hour, the hour
  as the log writes it (the server's local time);
- ``errors``: 5xx responses, bots included (a server error is one whoever asked), so the
  error rate is ``errors / (requests + bots)``;
- ``bots``: lines whose user agent matches ``BOT_RE`` (below) or is empty;
- ``malformed``: lines of the files read that are not in the combined format (nor a
  superset of it: combined followed by more fields, such as a request time, is read as
  combined). They are counted whatever their time, which they do not reliably have; a
  file last written before the period is not read at all (its lines are all older).

Which verticals: every vertical with a spec in the project (one without a log says so),
and every ``<slug>.access.log*`` in the folder whose name follows the slug rule (a
vertical removed from verticals/ that still gets traffic is worth seeing; nginx's own
``access.log`` does not follow the rule). On a host without the template repository,
the logs found are all there is.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from . import fsutil
from .errors import VgenError
from .spec import SLUG_RE

DEFAULT_LOG_DIR = Path("/var/log/nginx")
MAX_DAYS = 366
TOP_PATHS = 5

# combined: $remote_addr - $remote_user [$time_local] "$request" $status
# $body_bytes_sent "$http_referer" "$http_user_agent", then anything (a superset format).
# nginx escapes '"' inside the quoted fields (as \x22), so a quoted field has none.
LINE_RE = re.compile(r'(\S+) \S+ .*? \[([^\]]*)\] "([^"]*)" (\d{3}) (?:\d+|-) "[^"]*" "([^"]*)"(?:\s|$)')

# A user agent containing any of these (case-insensitive) is a bot: the word most crawlers
# put in their name (Googlebot, bingbot, AhrefsBot...), the other words crawlers use
# (crawl, spider, Yahoo's Slurp), HTTP libraries and command-line clients (an uptime
# monitor is usually one of these), headless browsers and link previewers. An empty user
# agent (nginx writes "-") is a bot too: no browser sends none.
BOT_WORDS = (
    "bot", "crawl", "spider", "slurp", "curl", "wget", "python-requests", "python-urllib",
    "aiohttp", "httpx", "go-http-client", "java/", "okhttp", "libwww-perl", "scrapy",
    "headless", "facebookexternalhit", "preview",
)
BOT_RE = re.compile("|".join(re.escape(word) for word in BOT_WORDS) + r"|^-?$", re.IGNORECASE)

LOG_NAME_RE = re.compile(r"^(?P<slug>[^.]+)\.access\.log(?:[.-]\d+)?(?:\.gz)?$")
MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


@dataclass
class Traffic:
    """One vertical's figures over the period."""

    slug: str
    days: int
    logs: list[str] = field(default_factory=list)  # the files read, by name
    has_spec: bool | None = None  # None when no project was asked
    visitors: int = 0
    requests: int = 0
    peak_hour_requests: int = 0
    peak_hour: int | None = None  # the peak hour's first second, as a Unix time
    errors: int = 0
    bots: int = 0
    malformed: int = 0
    daily: list[int] = field(default_factory=list)  # requests per 24 hours, oldest first
    daily_errors: list[int] = field(default_factory=list)
    top_paths: list[tuple[str, int]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether any log of this vertical is in the folder (read or too old to)."""
        return bool(self.logs)

    @property
    def error_rate(self) -> float:
        answered = self.requests + self.bots
        return self.errors / answered if answered else 0.0

    def as_json(self) -> dict:
        return {
            "visitors": self.visitors,
            "requests": self.requests,
            "peak_hour_requests": self.peak_hour_requests,
            "peak_hour": _iso(self.peak_hour) if self.peak_hour is not None else None,
            "errors": self.errors,
            "bots": self.bots,
            "malformed": self.malformed,
            "daily": self.daily,
            "top_paths": [{"path": path, "requests": n} for path, n in self.top_paths],
            "logs": self.logs,
            "spec": self.has_spec,
        }


@dataclass
class Report:
    log_dir: Path
    days: int
    since: int  # Unix times: the period is since <= t <= until
    until: int
    verticals: list[Traffic]  # most requests first

    def as_json(self) -> dict:
        return {t.slug: t.as_json() for t in self.verticals}


def parse_days(text) -> int:
    """--days as a number of days, or a VgenError naming the option."""
    try:
        days = int(str(text).strip())
    except ValueError:
        raise VgenError(f"--days {text}: not a whole number of days") from None
    if not 1 <= days <= MAX_DAYS:
        raise VgenError(f"--days {days}: must be from 1 to {MAX_DAYS}")
    return days


def stats(log_dir: Path = DEFAULT_LOG_DIR, slugs=None, days: int = 7, now: dt.datetime | None = None) -> Report:
    """Traffic per vertical over the `days` * 24 hours up to `now` (default: the current
    time), from the access logs in `log_dir`. `slugs`: the project's verticals, listed
    even without a log (None: only the logs found)."""
    log_dir = Path(log_dir)
    days = parse_days(days)
    if not log_dir.is_dir():
        raise VgenError(f"--log-dir {log_dir}: {'not a folder' if log_dir.exists() else 'no such folder'}")
    until = int((now or dt.datetime.now(dt.UTC)).timestamp())
    since = until - days * 86400
    found: dict[str, list[Path]] = {}
    try:
        entries = sorted(log_dir.iterdir())
    except OSError as exc:
        raise VgenError(f"--log-dir {log_dir}: cannot list it ({exc.strerror})") from None
    for path in entries:
        match = LOG_NAME_RE.match(path.name)
        if match and SLUG_RE.match(match["slug"]):
            found.setdefault(match["slug"], []).append(path)
    known = set(slugs) if slugs is not None else None
    traffic = []
    for slug in sorted(set(found) | (known or set())):
        t = Traffic(slug=slug, days=days, has_spec=None if known is None else slug in known)
        _tally(t, found.get(slug, []), since, until)
        traffic.append(t)
    traffic.sort(key=lambda t: (-t.requests, not t.found, t.slug))
    return Report(log_dir=log_dir, days=days, since=since, until=until, verticals=traffic)


class _Tally:
    """What one vertical's lines add up to while they are read."""

    def __init__(self, days: int):
        self.visitors: set[tuple[str, str]] = set()
        self.hours: Counter[int] = Counter()
        self.paths: Counter[str] = Counter()
        self.daily = [0] * days
        self.daily_errors = [0] * days
        self.requests = self.errors = self.bots = self.malformed = 0


def _tally(t: Traffic, paths: list[Path], since: int, until: int) -> None:
    tally = _Tally(t.days)
    for path in paths:
        t.logs.append(path.name)
        try:
            if path.stat().st_mtime < since:
                continue  # written to last before the period: every line is older
            with _open(path) as lines:
                _read(lines, tally, since, until)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise VgenError(f"{path}: a damaged gzip file ({exc})") from None
        except OSError as exc:
            raise VgenError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    t.visitors = len(tally.visitors)
    t.requests, t.errors, t.bots, t.malformed = tally.requests, tally.errors, tally.bots, tally.malformed
    if tally.hours:
        # The most requests; among equal hours, the first.
        t.peak_hour, t.peak_hour_requests = min(tally.hours.items(), key=lambda item: (-item[1], item[0]))
    t.daily, t.daily_errors = tally.daily, tally.daily_errors
    t.top_paths = sorted(tally.paths.items(), key=lambda item: (-item[1], item[0]))[:TOP_PATHS]


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _read(lines, tally: _Tally, since: int, until: int) -> None:
    """Add one file's lines to the tally (the hot loop: locals only)."""
    match = LINE_RE.match
    minutes: dict[str, tuple[int, int] | None] = {}  # $time_local to the minute -> (hour, minute)
    bot_of: dict[str, bool] = {}
    visitors, hours, paths = tally.visitors, tally.hours, tally.paths
    daily, daily_errors = tally.daily, tally.daily_errors
    last_day = len(daily) - 1
    requests = errors = bots = malformed = 0
    for line in lines:
        m = match(line)
        if m is None:
            malformed += 1
            continue
        addr, stamp, request, status, agent = m.groups()
        key = stamp[:17] + stamp[20:]
        try:
            hour, minute = minutes[key]
            second = int(stamp[18:20])
        except KeyError:
            minutes[key] = _parse_minute(stamp)
            if minutes[key] is None:
                malformed += 1
                continue
            hour, minute = minutes[key]
            second = int(stamp[18:20])
        except (TypeError, ValueError):  # a minute already known to be malformed, or the second
            malformed += 1
            continue
        if second > 60:  # 60: a leap second
            malformed += 1
            continue
        when = minute + second
        if when < since or when > until:
            continue
        day = (when - since) // 86400
        if day > last_day:
            day = last_day  # `until` itself
        if status[0] == "5":
            errors += 1
            daily_errors[day] += 1
        is_bot = bot_of.get(agent)
        if is_bot is None:
            is_bot = bot_of[agent] = BOT_RE.search(agent) is not None
        if is_bot:
            bots += 1
            continue
        requests += 1
        visitors.add((addr, agent))
        hours[hour] += 1
        daily[day] += 1
        parts = request.split(" ")
        if len(parts) == 3 and parts[1][:1] == "/":
            paths[parts[1].partition("?")[0]] += 1
    tally.requests += requests
    tally.errors += errors
    tally.bots += bots
    tally.malformed += malformed


def _parse_minute(stamp: str) -> tuple[int, int] | None:
    """nginx's $time_local ("10/Oct/2000:13:55:36 -0700") as the Unix times its clock hour
    and its minute start, or None when it is no such time."""
    if len(stamp) != 26 or stamp[2] != "/" or stamp[6] != "/" or stamp[11] != ":" or stamp[14] != ":" \
            or stamp[17] != ":" or stamp[20] != " " or not stamp[18:20].isdigit():
        return None
    try:
        sign = {"+": 1, "-": -1}[stamp[21]]
        offset = dt.timedelta(hours=int(stamp[22:24]), minutes=int(stamp[24:26])) * sign
        hour = dt.datetime(int(stamp[7:11]), MONTHS[stamp[3:6]], int(stamp[0:2]), int(stamp[12:14]),
                           tzinfo=dt.timezone(offset))
        minute = int(stamp[15:17])
    except (KeyError, ValueError):
        return None
    if not stamp[15:17].isdigit() or minute > 59:
        return None
    start = int(hour.timestamp())
    return start, start + minute * 60


def _iso(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def percent(rate: float) -> str:
    """An error rate as people read it: 0%, <0.1%, 0.3%, 12.5%."""
    if rate == 0:
        return "0%"
    return "<0.1%" if rate < 0.0005 else f"{rate * 100:.1f}%"


def period_text(report: Report) -> str:
    fmt = "%Y-%m-%d %H:%M"
    since, until = (dt.datetime.fromtimestamp(t, dt.UTC).strftime(fmt) for t in (report.since, report.until))
    return f"the last {_plural(report.days, 'day')} ({since} to {until} UTC)"


def summary_line(t: Traffic) -> str:
    """One vertical as one line: "cheesemaking: 1,847 unique visitors, 4,213 requests,
    peak 340 requests in an hour, 0.3% errors"."""
    unlisted = " (no spec in verticals/)" if t.has_spec is False else ""
    if not t.found:
        return f"{t.slug}: no access log"
    line = (f"{t.slug}{unlisted}: {_plural(t.visitors, 'unique visitor')}, {_plural(t.requests, 'request')}, "
            f"peak {_plural(t.peak_hour_requests, 'request')} in an hour, {percent(t.error_rate)} errors")
    extra = []
    if t.bots:
        extra.append(f"{_plural(t.bots, 'request')} from bots")
    if t.malformed:
        extra.append(_plural(t.malformed, "malformed line"))
    return line + (f" ({', '.join(extra)})" if extra else "")


def text_lines(report: Report) -> list[str]:
    """The text output: a heading, then one line per vertical, most requests first."""
    return [f"Traffic over {period_text(report)}, from {report.log_dir}:",
            *(summary_line(t) for t in report.verticals)]


def to_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2)


def write_html(report: Report, path: Path) -> None:
    """The page (html_page) written to `path` atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise VgenError(f"--html {path}: no folder {path.parent}")
    if path.is_dir():
        raise VgenError(f"--html {path}: is a folder")
    fsutil.atomic_write_text(path, html_page(report))


def html_page(report: Report) -> str:
    """A self-contained page: inline CSS and SVG, no script, nothing fetched."""
    return _page_template().render(
        report=report, period=period_text(report), bars=_bars, percent=percent,
        total_requests=sum(t.requests for t in report.verticals),
        total_visitors=sum(t.visitors for t in report.verticals),
        iso=_iso, fmt=lambda n: f"{n:,}", width=CHART_WIDTH, height=CHART_HEIGHT,
    )


CHART_WIDTH, CHART_HEIGHT = 280, 64


def _bars(t: Traffic, since: int) -> list[dict]:
    """One bar per 24 hours: its box, its errors' box (on top of the day's requests) and
    its label."""
    top = max(t.daily, default=0) or 1
    step = CHART_WIDTH / len(t.daily)
    bars = []
    for i, (n, errs) in enumerate(zip(t.daily, t.daily_errors)):
        start = dt.datetime.fromtimestamp(since + i * 86400, dt.UTC)
        height = CHART_HEIGHT * n / top
        label = f"24 hours from {start:%a %d %b %H:%M} UTC: {_plural(n, 'request')}"
        if errs:
            label += f", {_plural(errs, 'server error')}"
        bars.append({
            "x": round(i * step + step * 0.1, 2), "width": round(step * 0.8, 2),
            "y": round(CHART_HEIGHT - height, 2), "height": round(height, 2),
            "error_height": round(min(CHART_HEIGHT * errs / top, height), 2),
            "label": label,
        })
    return bars


def _page_template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(PAGE)


PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Traffic per vertical, {{ period }}</title>
<style>
  :root { color-scheme: light; --ink: #1d2433; --muted: #5b6475; --bar: #2f6fde; --error: #b42318; --line: #d9dee8; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f5f7fb; }
  main { max-width: 1200px; margin: 0 auto; padding: 24px 16px 48px; }
  h1 { font-size: 1.5rem; margin: 0 0 4px; }
  .period { color: var(--muted); margin: 0 0 20px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; }
  article { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
  h2 { font-size: 1.1rem; margin: 0 0 8px; overflow-wrap: anywhere; }
  .note { color: var(--muted); font-size: .85rem; font-weight: normal; }
  dl { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px 12px; margin: 0 0 10px; }
  dt { color: var(--muted); font-size: .75rem; }
  dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
  dd.bad { color: var(--error); }
  svg { display: block; width: 100%; height: auto; }
  .axis { display: flex; white-space: nowrap; justify-content: space-between; color: var(--muted); font-size: .75rem; margin: 2px 0 8px; }
  ol { margin: 0; padding-left: 1.2em; font-size: .85rem; }
  li { overflow-wrap: anywhere; }
  li span { color: var(--muted); }
  .none { color: var(--muted); margin: 0; }
</style>
</head>
<body>
<main>
<h1>Traffic per vertical</h1>
<p class="period">Over {{ period }}, from {{ report.log_dir }}: {{ fmt(report.verticals | length) }} verticals,
{{ fmt(total_visitors) }} unique visitors, {{ fmt(total_requests) }} requests (bots left out).
Each chart: requests per day, server errors in red.</p>
<div class="grid">
{% for t in report.verticals %}
<article id="vertical-{{ t.slug }}" aria-labelledby="title-{{ t.slug }}">
  <h2 id="title-{{ t.slug }}">{{ t.slug }}{% if t.has_spec is false %} <span class="note">no spec in verticals/</span>{% endif %}</h2>
{% if not t.found %}
  <p class="none">No access log.</p>
{% else %}
  <dl>
    <div><dt>Unique visitors</dt><dd>{{ fmt(t.visitors) }}</dd></div>
    <div><dt>Requests</dt><dd>{{ fmt(t.requests) }}</dd></div>
    <div><dt>Peak hour</dt><dd>{{ fmt(t.peak_hour_requests) }}</dd></div>
    <div><dt>Server errors</dt><dd{% if t.errors %} class="bad"{% endif %}>{{ percent(t.error_rate) }} ({{ fmt(t.errors) }})</dd></div>
    <div><dt>Bot requests</dt><dd>{{ fmt(t.bots) }}</dd></div>
    <div><dt>Malformed lines</dt><dd>{{ fmt(t.malformed) }}</dd></div>
  </dl>
  <svg viewBox="0 0 {{ width }} {{ height }}" role="img" aria-labelledby="chart-{{ t.slug }}">
    <title id="chart-{{ t.slug }}">Requests per day for {{ t.slug }}: {{ t.daily | join(", ") }}</title>
    <line x1="0" y1="{{ height }}" x2="{{ width }}" y2="{{ height }}" stroke="#d9dee8"/>
{% for bar in bars(t, report.since) %}
    <g><title>{{ bar.label }}</title>
      <rect x="{{ bar.x }}" y="{{ bar.y }}" width="{{ bar.width }}" height="{{ bar.height }}" fill="#2f6fde"/>
{% if bar.error_height %}
      <rect x="{{ bar.x }}" y="{{ bar.y }}" width="{{ bar.width }}" height="{{ bar.error_height }}" fill="#b42318"/>
{% endif %}
    </g>
{% endfor %}
  </svg>
  <div class="axis" aria-hidden="true"><span>{{ iso(report.since)[:10] }}</span><span>{{ iso(report.until)[:10] }}</span></div>
{% if t.top_paths %}
  <ol aria-label="Most requested pages">
{% for path, n in t.top_paths %}
    <li>{{ path }} <span>{{ fmt(n) }}</span></li>
{% endfor %}
  </ol>
{% endif %}
{% endif %}
</article>
{% endfor %}
</div>
</main>
</body>
</html>
"""
