"""Every example vertical installed into a booted Debian 12 container with real systemd.

The host is the session's container (tests/hosts.py): systemd as PID 1, journald,
DynamicUser, nginx and cron, and no package index: the apps' venvs are built from the
wheelhouse `vgen install` ships. The tests go the founder's way: `vgen install --all
--root <the container's root>`, then the printed `vgen-activate ...` run inside, then
HTTP from this machine to nginx at the container's address.

They run in file order on one xdist worker and share the host: the verticals installed
by the first test are the ones the later tests back up, kill, idle-stop, reload and
reboot.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import cli, status

from conftest import EXAMPLES, example_answers, mailed_link, render_app
from test_backup import Browser

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.xdist_group("systemd")]

PASSWORD = "correct horse battery"
# The vertical the write-heavy tests use: its aging rooms need only a name.
SLUG = "cheesemaking"


def site_name(slug: str) -> str:
    """The server_name of the vertical's nginx site."""
    return example_answers(slug).get("domain") or f"{slug}.localhost"


def install_and_activate(template_repo: Path, out: Path, host, slugs: list[str]) -> tuple[int, str]:
    """`vgen install SLUGS --root HOST_ROOT`, then the command it prints, run on the host.
    Returns vgen-activate's exit status and output."""
    result = CliRunner().invoke(cli.main, ["--project", str(template_repo), "install", *slugs,
                                           "--root", str(host.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    [command] = [line.strip() for line in result.output.splitlines() if "vgen-activate " in line]
    done = host.run(shlex.split(command), check=False, timeout=600)
    return done.returncode, done.stdout + done.stderr


def as_app(host, slug: str, *command: str, check: bool = True):
    """Run a command as the vertical's dynamic user, with its state directory, the way
    the generated backup unit's comments say to restore."""
    return host.run(
        ["systemd-run", "--quiet", "--wait", "--pipe", "--collect",
         "-p", "DynamicUser=yes", "-p", f"User={slug}", "-p", f"StateDirectory={slug}",
         "-p", f"WorkingDirectory=/srv/vgen/{slug}/current", "-E", f"DATA_DIR=/var/lib/{slug}",
         *command],
        check=check, timeout=120,
    )


def query(host, slug: str, sql: str) -> list[str]:
    done = as_app(host, slug, "/usr/bin/sqlite3", f"/var/lib/{slug}/{slug}.db", sql)
    return done.stdout.splitlines()


def show(host, unit: str, prop: str) -> str:
    return host.run(["systemctl", "show", "--value", "-p", prop, unit]).stdout.strip()


def service_states(host) -> dict[str, str]:
    """What `vgen status` reads on the host, from the container's own systemd."""
    return status.service_states(EXAMPLES, root=host.root,
                                 show=lambda args: host.run(["systemctl", "show", *args]).stdout)


def browser(host, slug: str) -> Browser:
    return Browser(80, address=host.address, host=site_name(slug), timeout=60)


def sign_up(host, slug: str) -> None:
    """Sign up, then open the link the app mailed (to its outbox in /var/lib/<slug>)."""
    b = browser(host, slug)
    token = b.csrf("/signup")
    status, _, page = b.request("POST", "/signup", {
        "csrf_token": token, "account": "Acme", "email": "owner@example.com",
        "password": PASSWORD, "confirm": PASSWORD,
    })
    assert status == 200, page
    link = mailed_link(host.root / f"var/lib/{slug}", "owner@example.com")
    status, _, page = b.request("POST", link, {"csrf_token": b.csrf(link)})
    assert status == 302, page


def log_in(b: Browser) -> None:
    token = b.csrf("/login")
    status, location, page = b.request("POST", "/login", {"csrf_token": token, "email": "owner@example.com",
                                                          "password": PASSWORD})
    assert status == 302 and not location.endswith("/login"), page


def add_room(b: Browser, token: str, name: str) -> bool:
    """POST a new aging room; True when the app answered that it saved it."""
    status, location, _ = b.request("POST", "/aging-rooms/new", {"csrf_token": token, "name": name})
    return status in (302, 303) and re.search(r"/aging-rooms/\d+$", location) is not None


@pytest.fixture(scope="module")
def fleet(systemd_host, template_repo, tmp_path_factory):
    """Every example generated and installed, and put into service on the host."""
    out = tmp_path_factory.mktemp("apps")
    for slug in EXAMPLES:
        render_app(template_repo, example_answers(slug), out / slug)
    status, output = install_and_activate(template_repo, out, systemd_host, EXAMPLES)
    assert status == 0, output
    for slug in EXAMPLES:  # an account each: data the later tests keep, through a reboot too
        sign_up(systemd_host, slug)
    return out


def test_every_example_serves_through_nginx_from_its_socket(systemd_host, fleet):
    host = systemd_host
    for slug in EXAMPLES:
        assert show(host, f"{slug}.socket", "ActiveState") == "active"
        assert show(host, f"{slug}.socket", "UnitFileState") == "enabled"
        b = browser(host, slug)
        status, _, page = b.request("GET", "/login")
        assert status == 200 and 'name="password"' in page, (slug, status, page[:300])
        # The service the socket started runs as a dynamic user, on the current release.
        pid = show(host, f"{slug}.service", "MainPID")
        assert pid != "0", slug
        uid = int(re.search(r"^Uid:\s+(\d+)", host.run(["cat", f"/proc/{pid}/status"]).stdout, re.M).group(1))
        assert 61184 <= uid <= 65519, (slug, uid)  # systemd's range for DynamicUser
        assert host.run(["readlink", "-f", f"/proc/{pid}/cwd"]).stdout.strip().startswith(f"/srv/vgen/{slug}/releases/")
        # The database lives in the state directory (/var/lib/private/<slug> behind the link).
        assert host.run(["test", "-s", f"/var/lib/{slug}/{slug}.db"], check=False).returncode == 0, slug
        assert query(host, slug, "SELECT count(*) FROM account") == ["1"]


def test_installed_units_are_hardened(systemd_host, fleet):
    for slug in EXAMPLES:
        for unit in (f"{slug}.service", f"{slug}-migrate.service", f"{slug}-backup.service"):
            done = systemd_host.run(["systemd-analyze", "security", "--no-pager", unit])
            level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout).group(1))
            assert level <= 0.9, (unit, level)


def test_a_second_install_changes_nothing_and_says_so(systemd_host, fleet, template_repo):
    result = CliRunner().invoke(cli.main, ["--project", str(template_repo), "install", *EXAMPLES,
                                           "--root", str(systemd_host.root), "--out", str(fleet)])
    assert result.exit_code == 0, result.output
    assert "Nothing changed under" in result.output
    [command] = [line.strip() for line in result.output.splitlines() if "vgen-activate " in line]
    done = systemd_host.run(shlex.split(command))
    for slug in EXAMPLES:
        assert re.search(rf"^{slug}: release [0-9a-f]+ is already current; nothing changed$", done.stdout, re.M), done.stdout


def test_the_nightly_backup_runs_as_the_app_and_restores(systemd_host, fleet):
    host = systemd_host
    b = browser(host, SLUG)
    log_in(b)
    token = b.csrf("/aging-rooms/new")
    assert add_room(b, token, "Cellar before the backup")
    # Start it the way cron does (the cron file's command).
    cron = (host.root / f"etc/cron.d/{SLUG}").read_text()
    command = re.search(r"^\S+ \S+ \* \* \* root (.+)$", cron, re.M).group(1)
    host.run(shlex.split(command), timeout=300)
    assert show(host, f"{SLUG}-backup.service", "Result") == "success"
    last = json.loads(host.run(["cat", f"/var/lib/{SLUG}/backups/last.json"]).stdout)
    backup = last.get("path") or last.get("file")
    assert backup, last
    backup = backup if backup.startswith("/") else f"/var/lib/{SLUG}/backups/{backup}"
    # The backup file belongs to the service's dynamic user, and SQLite finds it whole.
    assert as_app(host, SLUG, "/usr/bin/sqlite3", backup, "PRAGMA integrity_check").stdout.strip() == "ok"
    assert "Cellar before the backup" in as_app(host, SLUG, "/usr/bin/sqlite3", backup, "SELECT name FROM aging_room").stdout

    assert add_room(b, token, "Cellar after the backup")
    # Restore as the backup unit's comments say, while the app serves.
    unit = (host.root / f"etc/systemd/system/{SLUG}-backup.service").read_text()
    documented = re.search(r"^# Restore[^\n]*\n(?:#(?!   )[^\n]*\n)*((?:#   [^\n]*\n)+)", unit, re.M).group(1)
    restore = " ".join(line[4:].rstrip("\\ ").strip() for line in documented.splitlines())
    restore = restore.replace(f"/var/lib/{SLUG}/backups/FILE", backup)
    host.run(["sh", "-c", restore], timeout=300)
    rooms = query(host, SLUG, "SELECT name FROM aging_room ORDER BY id")
    assert rooms == ["Cellar before the backup"]
    # vgen status, where it runs on the host, finds that backup (or restore's safety copy).
    taken, kind = status.last_backup(fleet / SLUG, SLUG, root=host.root)
    assert kind in ("backup", "pre-restore") and taken.startswith(time.strftime("%Y-%m-%d", time.gmtime()))


def test_kill_9_of_the_master_loses_no_acknowledged_write(systemd_host, fleet):
    host = systemd_host
    b = browser(host, SLUG)
    log_in(b)
    token = b.csrf("/aging-rooms/new")
    acknowledged = []
    for i in range(20):
        if add_room(b, token, f"Before the kill {i}"):
            acknowledged.append(f"Before the kill {i}")
    assert len(acknowledged) == 20
    pid = show(host, f"{SLUG}.service", "MainPID")
    host.run(["kill", "-9", pid])
    # systemd restarts it (Restart=on-failure); meanwhile connections wait in the socket.
    deadline = time.monotonic() + 60
    after, said = 0, []
    while after < 5 and time.monotonic() < deadline:
        try:
            status, location, page = b.request("POST", "/aging-rooms/new",
                                               {"csrf_token": token, "name": f"After the kill {after}"})
            if status in (302, 303) and re.search(r"/aging-rooms/\d+$", location):
                acknowledged.append(f"After the kill {after}")
                after += 1
            else:
                said.append(f"{status} {' '.join(re.sub(r'<[^>]+>', ' ', page).split())[:200]}")
        except (OSError, http.client.HTTPException) as e:
            said.append(repr(e))  # no answer, no promise
            time.sleep(0.5)
    assert after == 5, (said[-5:], host.journal(f"{SLUG}.service", 30))
    assert show(host, f"{SLUG}.service", "MainPID") not in ("0", pid)
    assert int(show(host, f"{SLUG}.service", "NRestarts")) >= 1
    rooms = set(query(host, SLUG, "SELECT name FROM aging_room"))
    assert set(acknowledged) <= rooms


def test_an_idle_vertical_stops_and_the_next_request_starts_it(systemd_host, fleet):
    host = systemd_host
    env = host.root / f"etc/vgen/{SLUG}.env"
    original = env.read_text()
    env.write_text(original + "IDLE_STOP_SECONDS=3\n")
    try:
        host.run(["systemctl", "restart", f"{SLUG}.service"])
        b = browser(host, SLUG)
        assert b.request("GET", "/healthz")[0] == 200
        deadline = time.monotonic() + 30
        while show(host, f"{SLUG}.service", "ActiveState") != "inactive":
            assert time.monotonic() < deadline, host.journal(f"{SLUG}.service")
            time.sleep(0.5)
        assert show(host, f"{SLUG}.service", "MainPID") == "0"
        assert show(host, f"{SLUG}.service", "Result") == "success"  # stopped, not failed
        assert show(host, f"{SLUG}.socket", "ActiveState") == "active"
        assert service_states(host)[SLUG] == "idle"
        # No process of the app is left.
        assert host.run(["pgrep", "-f", f"/srv/vgen/{SLUG}/"], check=False).stdout.strip() == ""
        status, _, page = b.request("GET", "/login")
        assert status == 200, page
        assert show(host, f"{SLUG}.service", "ActiveState") == "active"
        assert service_states(host)[SLUG] == "active"
        # A client that pauses around the idle time: its requests meet the app running,
        # stopping by itself, and stopped; every one is answered.
        failures, stops = [], 0
        for pause in (2.5, 5, 3.5, 6, 3.2, 7, 4, 5.5):
            try:
                status = b.request("GET", "/healthz")[0]
            except (OSError, http.client.HTTPException) as e:
                status = repr(e)
            if status != 200:
                failures.append(status)
            time.sleep(pause)
            stops += show(host, f"{SLUG}.service", "ActiveState") != "active"
        assert failures == []
        assert stops >= 2  # the pauses did let it stop, more than once
    finally:
        env.write_text(original)
        host.run(["systemctl", "restart", f"{SLUG}.service"])


class Load:
    """A steady loop of reads and writes against a vertical, from two threads, counting
    every request that did not get a 2xx or 3xx answer."""

    runs = 0

    def __init__(self, host, slug: str):
        self.host, self.slug = host, slug
        Load.runs += 1
        self.prefix = f"Load {Load.runs}"
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.saved: list[str] = []
        self.requests = 0
        b = browser(host, slug)
        log_in(b)
        self.token = b.csrf("/aging-rooms/new")
        self.browser = b
        self.threads = [threading.Thread(target=self.write), threading.Thread(target=self.read)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def write(self):
        i = 0
        while not self.stop.is_set():
            name = f"{self.prefix}-{i}"
            i += 1
            try:
                status, location, page = self.browser.request(
                    "POST", "/aging-rooms/new", {"csrf_token": self.token, "name": name})
                if status in (302, 303) and re.search(r"/aging-rooms/\d+$", location):
                    self.saved.append(name)
                else:
                    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
                    self.failures.append(f"write {name}: {status} {location} {text[:300]}")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"write {name}: {e!r}")
            self.requests += 1

    def read(self):
        while not self.stop.is_set():
            try:
                status, _, _ = self.browser.request("GET", "/aging-rooms/")
                if status != 200:
                    self.failures.append(f"read: {status}")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"read: {e!r}")
            self.requests += 1


def test_a_new_release_reloads_under_load_and_a_failing_one_rolls_back(systemd_host, fleet, template_repo, tmp_path):
    host = systemd_host
    home = host.root / f"srv/vgen/{SLUG}"
    old = Path(home / "current").readlink().name
    answers = example_answers(SLUG)
    room = next(e for e in answers["entities"] if e["name"] == "aging_room")
    room["fields"].append({**room["fields"][-1], "name": "shelf_count", "label": "Shelf count",
                           "type": "integer", "required": False, "unique": False})
    new_out = tmp_path / "new"
    render_app(template_repo, answers, new_out / SLUG)
    with Load(host, SLUG) as load:
        time.sleep(2)
        status, output = install_and_activate(template_repo, new_out, host, [SLUG])
        time.sleep(2)
    assert status == 0, output
    assert load.failures == [] and load.requests > 20, (load.failures[:10], load.requests)
    new = Path(home / "current").readlink().name
    assert new != old and Path(home / "previous").readlink().name == old
    assert re.search(rf"^{SLUG}: release {new} serving; previous release {old}$", output, re.M), output
    assert set(load.saved) <= set(query(host, SLUG, "SELECT name FROM aging_room"))
    b = browser(host, SLUG)
    log_in(b)
    assert 'name="shelf_count"' in b.request("GET", "/aging-rooms/new")[2]

    # A release that cannot start: its health check fails before it serves, and the
    # release before it keeps serving throughout.
    broken_out = tmp_path / "broken"
    render_app(template_repo, answers, broken_out / SLUG)
    custom = broken_out / SLUG / "app/custom.py"
    custom.write_text(custom.read_text() + '\nraise RuntimeError("this release is broken on purpose")\n')
    with Load(host, SLUG) as load:
        time.sleep(1)
        status, output = install_and_activate(template_repo, broken_out, host, [SLUG])
        time.sleep(2)
    assert status == 1, output
    assert re.search(rf"^{SLUG}: FAILED: release [0-9a-f]+ refused, release {new} serves again", output, re.M), output
    assert "this release is broken on purpose" in output
    assert load.failures == [] and load.requests > 20, (load.failures[:10], load.requests)
    assert Path(home / "current").readlink().name == new
    assert 'name="shelf_count"' in b.request("GET", "/aging-rooms/new")[2]


def test_a_reboot_brings_every_vertical_back_with_its_data(systemd_host, fleet):
    systemd_host.reboot()
    for slug in EXAMPLES:
        b = browser(systemd_host, slug)
        log_in(b)  # the account signed up before the reboot
        assert b.request("GET", "/")[0] == 200
    rooms = query(systemd_host, SLUG, "SELECT count(*) FROM aging_room")
    assert int(rooms[0]) > 0
