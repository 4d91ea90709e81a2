"""`vgen deploy` to three booted containers over SSH, with the playbook vgen writes.

The five examples are placed across three hosts in hosts.toml; ansible-playbook (from
ansible-core) reaches each host as root with the test key. The tests run in file order
on one xdist worker and share the hosts.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import cli, placement

from conftest import EXAMPLES, example_answers, git, render_app
from test_systemd import Load, add_room, browser, log_in, query, sign_up

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.xdist_group("systemd")]

PLACEMENT = {"cheesemaking": "web1", "childmilestone": "web1", "coachboard": "web2", "honeybees": "web2",
             "shiftfill": "web3"}


@pytest.fixture(scope="module")
def three_hosts(tmp_path_factory):
    import hosts

    if os.environ.get(hosts.OPT_OUT) == "1":
        pytest.skip(f"{hosts.OPT_OUT}=1: the tests under real systemd are left out, as asked")
    try:
        with hosts.Fleet(tmp_path_factory.mktemp("deploy-hosts"), count=3) as fleet:
            yield {f"web{i + 1}": host for i, host in enumerate(fleet.hosts)}
    except hosts.Unavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def project_root(template_repo, three_hosts, tmp_path_factory):
    """A clone of the template with the five examples generated and hosts.toml naming
    the three containers."""
    root = tmp_path_factory.mktemp("deploy") / "vgen"
    subprocess.run(["git", "clone", "-q", "--local", str(template_repo), str(root)], check=True)
    for slug in EXAMPLES:
        render_app(template_repo, example_answers(slug), root / "apps" / slug)
    lines = ['[defaults]\nhost = "web1"\n']
    for name, host in three_hosts.items():
        lines.append(f'[hosts.{name}]\naddress = "{host.address}"\n'
                     f'vars = {{ ansible_ssh_private_key_file = "{host.key}", '
                     f'ansible_ssh_common_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" }}\n')
    lines.append("[placement]\n" + "".join(f'{slug} = "{host}"\n' for slug, host in PLACEMENT.items()))
    (root / "hosts.toml").write_text("\n".join(lines))
    return root


def deploy(root: Path, *args: str):
    return CliRunner().invoke(cli.main, ["--project", str(root), "deploy", *args, "--out", str(root / "apps")])


def healthz(host, slug: str) -> int:
    name = example_answers(slug).get("domain") or f"{slug}.localhost"
    request = urllib.request.Request(f"http://{host.address}/healthz", headers={"Host": name})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def current(host, slug: str) -> str | None:
    link = host.root / f"srv/vgen/{slug}/current"
    return os.readlink(link).removeprefix("releases/") if os.path.islink(link) else None


def tree_digest(host) -> str:
    """A hash of what a deploy lays on a host: every file, link and mode under them."""
    digest = hashlib.sha256()
    for top in ("srv/vgen", "etc/systemd/system", "etc/nginx", "etc/vgen", "etc/cron.d", "usr/local/sbin"):
        for path in sorted((host.root / top).rglob("*")):
            digest.update(str(path.relative_to(host.root)).encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(oct(path.stat().st_mode).encode() + path.read_bytes())
    return digest.hexdigest()


def test_deploy_places_every_example_on_its_host(project_root, three_hosts):
    result = deploy(project_root, "--all")
    assert result.exit_code == 0, result.output
    ports = tomllib.loads((project_root / "ports.toml").read_text())["ports"]
    for slug, name in PLACEMENT.items():
        host = three_hosts[name]
        assert healthz(host, slug) == 200, (slug, name)
        unit = (host.root / f"etc/systemd/system/{slug}.socket").read_text()
        assert f"ListenStream=127.0.0.1:{ports[slug]}\n" in unit
        for other in set(three_hosts) - {name}:  # only on its own host
            assert not (three_hosts[other].root / f"srv/vgen/{slug}").exists()
        assert re.search(rf"^\s*{name}\s+{slug}\s+[0-9a-f]{{12}}\s+release [0-9a-f]{{12}} ready", result.output, re.M), \
            result.output
    assert "PLAY RECAP" in result.output


ACTIVATE_RAN = "root/vgen-activate-ran"


def mark_activate_runs(hosts) -> None:
    """Wrap each host's vgen-activate so that a run leaves a mark (ACTIVATE_RAN)."""
    for host in hosts:
        activate = host.root / "usr/local/sbin/vgen-activate"
        os.replace(activate, activate.with_name("vgen-activate.real"))
        activate.write_text(f'#!/bin/sh\ntouch /{ACTIVATE_RAN}\nexec /usr/local/sbin/vgen-activate.real "$@"\n')
        activate.chmod(0o755)


def unmark_activate_runs(hosts) -> None:
    for host in hosts:
        activate = host.root / "usr/local/sbin/vgen-activate"
        os.replace(activate.with_name("vgen-activate.real"), activate)
        (host.root / ACTIVATE_RAN).unlink(missing_ok=True)


def test_a_second_deploy_changes_nothing(project_root, three_hosts):
    mark_activate_runs(three_hosts.values())
    try:
        result = deploy(project_root, "--all")
        assert result.exit_code == 0, result.output
        for name in three_hosts:
            assert re.search(rf"^{name}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", result.output, re.M), \
                result.output
        assert result.output.count("is already current; nothing changed") == len(PLACEMENT)
        # Every release in service with its socket up: vgen-activate is left out.
        assert [name for name, host in three_hosts.items() if (host.root / ACTIVATE_RAN).exists()] == []

        # A socket someone stopped is not "in service": that host runs vgen-activate again.
        three_hosts["web2"].run(["systemctl", "disable", "--now", "coachboard.socket"])
        result = deploy(project_root, "--all")
        assert result.exit_code == 0, result.output
        assert [name for name, host in three_hosts.items() if (host.root / ACTIVATE_RAN).exists()] == ["web2"]
        assert three_hosts["web2"].run(["systemctl", "is-enabled", "coachboard.socket"]).stdout.strip() == "enabled"
        assert healthz(three_hosts["web2"], "coachboard") == 200
        assert result.output.count("is already current; nothing changed") == len(PLACEMENT)
    finally:
        unmark_activate_runs(three_hosts.values())


def change_every_app(root: Path, marker: str) -> None:
    for slug in EXAMPLES:
        readme = root / "apps" / slug / "README.md"
        readme.write_text(readme.read_text() + f"\n{marker}\n")


def test_check_mode_changes_nothing_on_any_host(project_root, three_hosts):
    change_every_app(project_root, "A change check mode must not lay.")
    before = {name: tree_digest(host) for name, host in three_hosts.items()}
    result = deploy(project_root, "--all", "--check", "--diff")
    assert result.exit_code == 0, result.output
    assert {name: tree_digest(host) for name, host in three_hosts.items()} == before
    assert "check mode: not activated" in result.output


def test_a_failing_release_stops_the_rollout_and_later_hosts_keep_theirs(project_root, three_hosts):
    """web1 takes its new releases; coachboard's fails its health check on web2 and is
    rolled back there; web3 is never touched."""
    old = {slug: current(three_hosts[name], slug) for slug, name in PLACEMENT.items()}
    change_every_app(project_root, "A change that reaches every host.")
    custom = project_root / "apps/coachboard/app/custom.py"
    custom.write_text(custom.read_text() + '\nraise RuntimeError("coachboard is broken on purpose")\n')
    web3 = tree_digest(three_hosts["web3"])
    result = deploy(project_root, "--all")
    assert result.exit_code == 1, result.output
    assert re.search(r"^\s*web2\s+coachboard\s+[0-9a-f]{12}\s+FAILED: release [0-9a-f]{12} refused", result.output, re.M), \
        result.output
    assert current(three_hosts["web2"], "coachboard") == old["coachboard"]
    assert healthz(three_hosts["web2"], "coachboard") == 200
    for slug in ("cheesemaking", "childmilestone"):  # web1 went first, and is on the new releases
        assert current(three_hosts["web1"], slug) != old[slug]
    assert current(three_hosts["web3"], "shiftfill") == old["shiftfill"]
    assert tree_digest(three_hosts["web3"]) == web3
    assert re.search(r"^\s*web3\s+shiftfill\s+[0-9a-f]{12}\s+not reached", result.output, re.M), result.output


def test_a_host_that_is_down_stops_the_rollout_by_name(project_root, three_hosts):
    custom = project_root / "apps/coachboard/app/custom.py"
    custom.write_text(custom.read_text().replace('\nraise RuntimeError("coachboard is broken on purpose")\n', ""))
    three_hosts["web2"].poweroff()
    try:
        web3 = tree_digest(three_hosts["web3"])
        result = deploy(project_root, "--all")
        assert result.exit_code == 1, result.output
        assert re.search(r"^fatal: \[web2\]: (UNREACHABLE|FAILED)!", result.output, re.M), result.output
        assert tree_digest(three_hosts["web3"]) == web3
        for slug in ("cheesemaking", "childmilestone"):  # web1 keeps serving
            assert healthz(three_hosts["web1"], slug) == 200
    finally:
        three_hosts["web2"].boot()
    result = deploy(project_root, "--all")  # back up: the rollout completes
    assert result.exit_code == 0, result.output
    for slug, name in PLACEMENT.items():
        assert healthz(three_hosts[name], slug) == 200


def test_a_template_change_rolls_out_to_every_host_without_a_failed_request(project_root, three_hosts):
    """A committed template change, regenerated and deployed to every host, one host at a
    time, while a logged-in client reads, writes and asks /healthz of cheesemaking
    through web1's nginx: not one request fails, and every host serves the change."""
    base = project_root / "template/app/templates/base.html.jinja"
    marker = "Rolled out to every host"
    base.write_text(base.read_text().replace('<footer class="site">{{ spec.NAME }}</footer>',
                                             f'<footer class="site">{{{{ spec.NAME }}}} · {marker}</footer>'))
    git(project_root, "commit", "-q", "-am", "A visible template change")
    result = CliRunner().invoke(cli.main, ["--project", str(project_root), "generate", "--all", "--jobs", "2",
                                           "--out", str(project_root / "apps")])
    assert result.exit_code == 0, result.output
    assert f"{len(EXAMPLES)} updated in" in result.output, result.output

    web1 = three_hosts["web1"]
    sign_up(web1, "cheesemaking")
    stop, health = threading.Event(), []

    def ask_health():
        b = browser(web1, "cheesemaking")
        while not stop.is_set():
            try:
                health.append(b.request("GET", "/healthz")[0])
            except OSError as e:
                health.append(repr(e))

    checker = threading.Thread(target=ask_health)
    with Load(web1, "cheesemaking") as load:
        checker.start()
        try:
            time.sleep(1)
            result = deploy(project_root, "--all")
            time.sleep(1)
        finally:
            stop.set()
            checker.join()
    assert result.exit_code == 0, result.output
    assert load.failures == [] and load.requests > 20, (load.failures[:10], load.requests)
    assert len(health) > 20 and set(health) == {200}, [h for h in health if h != 200][:10]
    for slug, name in PLACEMENT.items():
        b = browser(three_hosts[name], slug)
        status, _, page = b.request("GET", "/login")
        assert status == 200 and marker in page, (slug, name, status)
    b = browser(web1, "cheesemaking")
    log_in(b)
    status, _, page = b.request("GET", "/aging-rooms/")
    assert status == 200 and marker in page
    assert load.saved and set(load.saved) <= set(query(web1, "cheesemaking", "SELECT name FROM aging_room"))


class FollowingClient:
    """One logged-in client of a vertical that goes where hosts.toml places it (as its
    DNS name would), in a loop: a search of the list page, /healthz and a new record.
    Each answer must be right (the records it knows about, a saved record) or a 503
    that says to try again; anything else is recorded as a failure."""

    def __init__(self, project_root: Path, three_hosts, slug: str, known: str):
        self.root, self.hosts, self.slug, self.known = project_root, three_hosts, slug, known
        self.browser = browser(self.host()[1], slug)
        log_in(self.browser)
        self.token = self.browser.csrf("/aging-rooms/new")
        self.stop = threading.Event()
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self.saved: list[str] = []
        self.thread = threading.Thread(target=self.loop)

    def host(self) -> tuple[str, object]:
        """The name hosts.toml places the vertical on, and that host."""
        fleet, _ = placement.load(self.root / "hosts.toml", EXAMPLES)
        name = fleet.host_of(self.slug).name
        return name, self.hosts[name]

    def ask(self, method: str, path: str, form=None) -> tuple[int, str, str] | None:
        name, host = self.host()
        self.browser.address = host.address
        try:
            status, location, page = self.browser.request(method, path, form)
        except (OSError, http.client.HTTPException) as e:
            self.failures.append(f"{method} {path} on {name}: {e!r}")
            return None
        key = f"{status} from {name}"
        self.answers[key] = self.answers.get(key, 0) + 1
        if status == 503 and "try again" in page:
            return None
        return status, location, page

    def loop(self):
        i = 0
        while not self.stop.is_set():
            said = self.ask("GET", "/aging-rooms/?q=Before+the+move")
            if said and not (said[0] == 200 and self.known in said[2]):
                self.failures.append(f"search: {said[0]} {said[1]} {said[2][:200]!r}")
            said = self.ask("GET", "/healthz")
            if said and said[0] != 200:
                self.failures.append(f"healthz: {said[0]} {said[2][:200]!r}")
            name = f"During the move {i}"
            i += 1
            said = self.ask("POST", "/aging-rooms/new", {"csrf_token": self.token, "name": name})
            if said and said[0] == 302 and re.search(r"/aging-rooms/\d+$", said[1]):
                self.saved.append(name)
            elif said:
                self.failures.append(f"write: {said[0]} {said[1]} {said[2][:200]!r}")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def table_rows(host, db: str, slug: str | None = None) -> dict[str, list[str]]:
    """Every row of every table of a database on a host: as the app's user when the app
    owns it (slug), else as root."""
    def sql(statement):
        if slug:
            return query(host, slug, statement)
        return host.run(["sqlite3", db, statement]).stdout.splitlines()
    tables = sql("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    # (Compared as sets: some tables are WITHOUT ROWID, and have no rowid to order by.)
    return {table: sql(f'SELECT * FROM "{table}"') for table in tables}


def test_moving_a_vertical_carries_every_row_and_the_old_host_lets_it_go(project_root, three_hosts):
    """cheesemaking, with its account and records, moves from web1 to web3 while a
    client keeps reading and writing where hosts.toml places it."""
    web1, web3 = three_hosts["web1"], three_hosts["web3"]
    b = browser(web1, "cheesemaking")
    log_in(b)
    token = b.csrf("/aging-rooms/new")
    for i in range(5):
        assert add_room(b, token, f"Before the move {i}")
    with FollowingClient(project_root, three_hosts, "cheesemaking", "Before the move 4") as client:
        time.sleep(2)
        result = CliRunner().invoke(cli.main, ["--project", str(project_root), "move", "cheesemaking", "web3",
                                               "--out", str(project_root / "apps")])
        time.sleep(3)
    assert result.exit_code == 0, result.output
    assert client.failures == [], (client.failures[:10], client.answers)
    # It answered on web1, said "try again" while it moved, and answers on web3.
    assert {"200 from web1", "503 from web1", "200 from web3"} <= set(client.answers), client.answers
    assert placement.load(project_root / "hosts.toml", EXAMPLES)[0].host_of("cheesemaking").name == "web3"

    # Every row arrived: the old host's safety copy and the new database hold the same
    # rows, but for the records the client made on web3 after the move.
    [kept] = web1.run("ls -d /var/lib/vgen-retired/cheesemaking-*/data").stdout.split()
    old = table_rows(web1, f"{kept}/cheesemaking.db")
    new = table_rows(web3, "/var/lib/cheesemaking/cheesemaking.db", slug="cheesemaking")
    assert old["aging_room"] and any("Before the move 4" in row for row in old["aging_room"])
    for table, rows in old.items():
        assert set(rows) <= set(new[table]), (table, sorted(set(rows) - set(new[table]))[:5])
    names = set(query(web3, "cheesemaking", "SELECT name FROM aging_room"))
    assert set(client.saved) <= names and any(n.startswith("During the move") for n in client.saved)

    # The old host serves it no more: no site, no units, no release.
    assert healthz(web1, "cheesemaking") == 404
    for gone in ("etc/systemd/system/cheesemaking.socket", "etc/systemd/system/cheesemaking.service",
                 "etc/nginx/sites-enabled/cheesemaking.conf", "etc/cron.d/cheesemaking", "srv/vgen/cheesemaking"):
        assert not os.path.lexists(web1.root / gone), gone
    assert healthz(web1, "childmilestone") == 200  # its neighbour is untouched
    assert healthz(web3, "cheesemaking") == 200 and healthz(web3, "shiftfill") == 200

    # A deploy now follows the new placement.
    result = deploy(project_root, "--all")
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s*web3\s+cheesemaking\s", result.output, re.M), result.output
    assert not (web1.root / "srv/vgen/cheesemaking").exists()


def status_rows(root: Path) -> dict[str, list[str]]:
    result = CliRunner().invoke(cli.main, ["--project", str(root), "status", "--out", str(root / "apps")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["vertical", "host", "port"], result.output
    return {line.split()[0]: line.split() for line in lines[1:] if line.strip()}


def test_status_reads_each_host_over_ssh(project_root, three_hosts):
    placed = {**PLACEMENT, "cheesemaking": "web3"}  # moved by the test before
    rows = status_rows(project_root)
    ports = tomllib.loads((project_root / "ports.toml").read_text())["ports"]
    for slug, name in placed.items():
        row = rows[slug]
        assert row[1] == name and row[2] == str(ports[slug]), row
        assert row[-1] in ("active", "idle"), row  # the service column, read on the host
        assert ("ok" in row) or ("idle" in row[:-1]), row  # health, through that host's nginx
    three_hosts["web2"].poweroff()
    try:
        rows = status_rows(project_root)
    finally:
        three_hosts["web2"].boot()
    for slug, name in placed.items():
        if name == "web2":
            assert rows[slug][-1] == "unreachable" and "unreachable" in rows[slug][:-1], rows[slug]
        else:
            assert rows[slug][-1] in ("active", "idle"), rows[slug]


def placed_on(root: Path, slug: str) -> str:
    return placement.load(root / "hosts.toml", EXAMPLES)[0].host_of(slug).name


def test_a_placement_edited_by_hand_moves_the_vertical_with_its_data_on_deploy(project_root, three_hosts):
    """cheesemaking, with records made through its forms where it lives, is placed on
    another host by editing hosts.toml; `vgen deploy --all` carries it there, every row,
    and the old host serves it no more. A vertical found in service on two hosts stops
    the deploy before anything changes; --check moves nothing."""
    assert deploy(project_root, "--all").exit_code == 0  # (run alone: the fleet's first rollout)
    source = placed_on(project_root, "cheesemaking")  # web3 after the move test
    target = "web1" if source != "web1" else "web2"
    old, new = three_hosts[source], three_hosts[target]
    b = browser(old, "cheesemaking")
    try:
        log_in(b)
    except AssertionError:  # run alone: no account yet
        sign_up(old, "cheesemaking")
        log_in(b)
    token = b.csrf("/aging-rooms/new")
    for i in range(5):
        assert add_room(b, token, f"Before the placement edit {i}")
    before = table_rows(old, "/var/lib/cheesemaking/cheesemaking.db", slug="cheesemaking")
    assert "Before the placement edit 4" in query(old, "cheesemaking", "SELECT name FROM aging_room")

    # coachboard in service on web1 as well as on web2: the deploy stops, naming both, and changes nothing.
    stray = three_hosts["web1"].root / "srv/vgen/coachboard"
    stray.mkdir(parents=True)
    (stray / "current").symlink_to("releases/0123456789ab")
    try:
        digests = {name: tree_digest(host) for name, host in three_hosts.items()}
        result = deploy(project_root, "--all")
        assert result.exit_code == 1, result.output
        assert "vgen deploy changed nothing" in result.output, result.output
        assert "[placement] coachboard: in service on web1 and web2, placed on web2" in result.output, result.output
        assert {name: tree_digest(host) for name, host in three_hosts.items()} == digests
    finally:
        shutil.rmtree(stray)

    hosts_toml = project_root / "hosts.toml"
    text = hosts_toml.read_text()
    assert f'cheesemaking = "{source}"' in text
    hosts_toml.write_text(text.replace(f'cheesemaking = "{source}"', f'cheesemaking = "{target}"'))

    # --check says what would move, and moves nothing.
    digests = {name: tree_digest(host) for name, host in three_hosts.items()}
    result = deploy(project_root, "--all", "--check")
    assert result.exit_code == 0, result.output
    assert f"cheesemaking would move from {source} to {target}" in result.output, result.output
    assert re.search(rf"^\s*{target}\s+cheesemaking\s+[0-9a-f]{{12}}\s+would move from {source}", result.output, re.M), \
        result.output
    assert {name: tree_digest(host) for name, host in three_hosts.items()} == digests

    result = deploy(project_root, "--all")
    assert result.exit_code == 0, result.output
    assert re.search(rf"^\s*{target}\s+cheesemaking\s+[0-9a-f]{{12}}\s+moved from {source}", result.output, re.M), \
        result.output
    assert placed_on(project_root, "cheesemaking") == target
    # Every row is on the new host.
    after = table_rows(new, "/var/lib/cheesemaking/cheesemaking.db", slug="cheesemaking")
    for table, rows in before.items():
        assert set(rows) <= set(after[table]), (table, sorted(set(rows) - set(after[table]))[:5])
    b = browser(new, "cheesemaking")
    log_in(b)
    status, _, page = b.request("GET", "/aging-rooms/?q=Before+the+placement+edit")
    assert status == 200 and "Before the placement edit 4" in page
    # The old host serves it no more; its neighbours there are untouched.
    assert healthz(old, "cheesemaking") == 404
    assert not os.path.lexists(old.root / "srv/vgen/cheesemaking")
    assert not os.path.lexists(old.root / "etc/systemd/system/sockets.target.wants/cheesemaking.socket")
    for slug, name in PLACEMENT.items():
        if slug != "cheesemaking":
            assert healthz(three_hosts[name], slug) == 200, slug

    # A second deploy changes nothing and moves nothing.
    result = deploy(project_root, "--all")
    assert result.exit_code == 0, result.output
    assert "moved from" not in result.output, result.output
    for name in three_hosts:
        assert re.search(rf"^{name}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", result.output, re.M), \
            result.output
