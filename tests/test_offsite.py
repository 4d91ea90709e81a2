"""Off-site backups through rclone, restore drills and alarms, against a real S3 server.

moto's server mode (`moto_server`, from the test extra) plays the off-site store; the
generated app's backup talks to it through Debian's rclone, as it would to any S3
bucket. The backups run in the app's own code: `flask --app app backup` in a subprocess,
or its run_backup function called in one subprocess for a simulated year of nights.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import alarms, certs, cli, drill
from generator.project import Project

from conftest import example_answers, render_app

SLUG = "cheesemaking"
MOTO = Path(sys.executable).with_name("moto_server")
BUCKET = "vgen-backups"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto_server on a port of its own; stop() kills it, start() brings back an empty one."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc = None

    def start(self) -> None:
        log = open(self.folder / "moto.log", "a")
        self.proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {(self.folder / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    if not MOTO.exists():
        pytest.fail(f"{MOTO} is missing: scripts/install installs moto[server] (the test extra)", pytrace=False)
    if not shutil.which("rclone"):
        pytest.fail("rclone is missing: scripts/system-packages installs it", pytrace=False)
    server = Moto(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    if server.proc.poll() is None:
        server.kill()


def environment_for(moto: Moto, folder: Path) -> dict:
    """The environment the backups and drills run with: an rclone config naming the
    moto server as remote "offsite" (what /etc/vgen/rclone.conf holds on a host)."""
    config = folder / "rclone.conf"
    config.write_text(
        "[offsite]\ntype = s3\nprovider = Other\n"
        f"endpoint = http://127.0.0.1:{moto.port}\n"
        "access_key_id = test\nsecret_access_key = test\nregion = us-east-1\n"
        # The bucket exists: a key that may only write into it needs this too.
        "no_check_bucket = true\n"
    )
    env = dict(os.environ, RCLONE_CONFIG=str(config),
               # A dead server fails a run in a second instead of rclone's minutes of retries.
               RCLONE_RETRIES="1", RCLONE_LOW_LEVEL_RETRIES="1", RCLONE_CONTIMEOUT="2s")
    # This machine points AWS_CA_BUNDLE at its own CA file; rclone's S3 backend cannot
    # take one over plain HTTP, and a host has none.
    env.pop("AWS_CA_BUNDLE", None)
    for name in ("BACKUP_OFFSITE", "BACKUP_OFFSITE_COMMAND", "PYTHONPATH", "DATA_DIR"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def rclone_env(moto, tmp_path_factory):
    make_bucket(moto, BUCKET)
    return environment_for(moto, tmp_path_factory.mktemp("rclone"))


def rclone(env, *args) -> str:
    return subprocess.run(["rclone", *args], env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def make_bucket(moto, name: str = BUCKET) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto.port}", region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket=name)


def remote_listing(env, folder: str) -> dict[str, dict]:
    return {item["Name"]: item for item in json.loads(rclone(env, "lsjson", "--hash", "--files-only", folder))}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def app_dir(template_repo, tmp_path_factory):
    """The cheesemaking example, rendered as vgen renders it, in an apps folder."""
    out = tmp_path_factory.mktemp("apps")
    return render_app(template_repo, example_answers(SLUG), out / SLUG)


def flask(app_dir: Path, env: dict, data_dir: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=app_dir,
                          env=dict(env, DATA_DIR=str(data_dir)), capture_output=True, text=True, timeout=120)


def migrated(app_dir: Path, env: dict, data_dir: Path) -> Path:
    """The app's database in data_dir, made by its own migrate."""
    done = flask(app_dir, env, data_dir, "migrate")
    assert done.returncode == 0, done.stderr
    return data_dir / f"{app_dir.name}.db"


def add_rooms(database: Path, names: list[str]) -> None:
    db = sqlite3.connect(database)
    try:
        if not db.execute('SELECT 1 FROM "account" WHERE "id" = 1').fetchone():
            db.execute('INSERT INTO "account" ("id", "name") VALUES (1, \'Acme\')')
        now = "2026-01-01T00:00:00Z"
        db.executemany('INSERT INTO "aging_room" ("account_id", "name", "created_at", "updated_at") VALUES (1, ?, ?, ?)',
                       [(name, now, now) for name in names])
        db.commit()
    finally:
        db.close()


# -- a simulated year of nightly runs --------------------------------------------------

YEAR = """
import datetime, json, sys
sys.path.insert(0, ".")
from app.backup import run_backup

database, directory, remote = sys.argv[1:4]
first = datetime.datetime(2024, 1, 1, 3, 17, tzinfo=datetime.timezone.utc)
failed = []
for day in range(365):
    record = run_backup(database, directory, now=first + datetime.timedelta(days=day), offsite=remote)
    if record["error"] or not record["offsite"]["ok"]:
        failed.append((day, record["error"]))
print(json.dumps({"failed": failed, "last": record}))
"""

# Nightly backups from 2024-01-01 to 2024-12-30 (a Monday, the first day of ISO week
# 2025-W01): the 7 newest days, the newest of each of the 4 newest ISO weeks and of the
# 12 newest months.
KEPT_AFTER_A_YEAR = sorted(
    [f"2024-12-{d}" for d in range(24, 31)]  # daily; Dec 30 and 29 are weekly too
    + ["2024-12-22", "2024-12-15"]  # weeks 51 and 50
    + ["2024-11-30", "2024-10-31", "2024-09-30", "2024-08-31", "2024-07-31", "2024-06-30",
       "2024-05-31", "2024-04-30", "2024-03-31", "2024-02-29", "2024-01-31"]  # months
)


# Slow: each night runs rclone three times (upload, list with hashes, delete what the rule
# drops), about a quarter of a second on an idle machine: a year takes one to two minutes.
@pytest.mark.slow
def test_a_year_of_nightly_runs_keeps_the_7_4_12_set_off_site(app_dir, moto, rclone_env, tmp_path):
    make_bucket(moto, "year")
    data = tmp_path / "data"
    database = migrated(app_dir, rclone_env, data)
    add_rooms(database, ["cellar", "cave"])
    remote = f"offsite:year/{SLUG}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", YEAR, str(database), str(data / "backups"), remote],
                          cwd=app_dir, env=rclone_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failed"] == []
    print(f"365 runs in {time.monotonic() - started:.1f}s")

    expected = {f"{SLUG}-{day.replace('-', '')}T031700Z.db" for day in KEPT_AFTER_A_YEAR}
    listing = remote_listing(rclone_env, remote)
    assert set(listing) == expected
    local = {p.name for p in (data / "backups").glob(f"{SLUG}-*.db")}
    assert local == expected
    for name, item in listing.items():
        assert item["Hashes"]["md5"] == md5(data / "backups" / name)

    last = result["last"]
    newest = f"{SLUG}-20241230T031700Z.db"
    assert last["offsite"]["remote"] == f"{remote}/{newest}"
    assert last["offsite"]["checksum"] == "md5:" + md5(data / "backups" / newest)
    # Dec 23: a day of week 52, whose newest is Dec 29; Dec 8: week 49, out of the 4
    # newest weeks once 2025-W01 began.
    assert last["offsite"]["removed"] == [f"{SLUG}-20241223T031700Z.db", f"{SLUG}-20241208T031700Z.db"]
    assert last["tables"]["aging_room"] == 2
    recorded = json.loads((data / "backups" / "last.json").read_text())
    assert recorded["last_offsite"]["remote"] == last["offsite"]["remote"]
    assert recorded["last_offsite"]["tables"] == last["tables"]


# -- one vertical's nights ------------------------------------------------------------


@pytest.fixture
def fleet(template_repo, tmp_path) -> Project:
    """A project whose apps folder holds the cheesemaking app, freshly rendered: what
    `vgen status` and `vgen drill` look at (its DATA_DIR is the app's instance folder)."""
    project = Project(root=template_repo, out=tmp_path / "apps")
    render_app(template_repo, example_answers(SLUG), project.out / SLUG)
    return project


def backup(project: Project, env: dict, slug: str = SLUG, **settings) -> subprocess.CompletedProcess:
    """`flask --app app backup` in the app, with its default DATA_DIR (instance/)."""
    app = project.app_dir(slug)
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", "backup"], cwd=app,
                          env=dict(env, **settings), capture_output=True, text=True, timeout=300)


def last(project: Project, slug: str = SLUG) -> dict:
    return json.loads((project.app_dir(slug) / "instance/backups/last.json").read_text())


def status_check(project: Project, root: Path):
    return CliRunner().invoke(cli.main, ["--project", str(project.root), "status", "--check",
                                         "--out", str(project.out), "--root", str(root)])


def test_a_backup_arrives_off_site_with_its_checksum(fleet, moto, rclone_env):
    make_bucket(moto, "arrives")
    app = fleet.app_dir(SLUG)
    add_rooms(migrated(app, rclone_env, app / "instance"), ["cellar"])
    done = backup(fleet, rclone_env, BACKUP_OFFSITE=f"offsite:arrives/{SLUG}")
    assert done.returncode == 0, done.stderr
    record = last(fleet)
    local = Path(record["file"])
    remote = f"offsite:arrives/{SLUG}/{local.name}"
    assert record["error"] is None and record["offsite"]["ok"] is True
    assert record["offsite"]["remote"] == remote
    assert record["offsite"]["checksum"] == f"md5:{md5(local)}"
    assert f"Off-site copy verified: {remote} (md5:{md5(local)})" in done.stdout
    listing = remote_listing(rclone_env, f"offsite:arrives/{SLUG}")
    assert list(listing) == [local.name]
    assert listing[local.name]["Hashes"]["md5"] == md5(local)
    fetched = Path(rclone_env["RCLONE_CONFIG"]).with_name("fetched.db")
    rclone(rclone_env, "copyto", remote, str(fetched))
    assert fetched.read_bytes() == local.read_bytes()
    assert record["last_offsite"]["tables"] == record["tables"] and record["tables"]["aging_room"] == 1


def rclone_uploading(bucket: str) -> bool:
    """Whether an `rclone copyto` into bucket is running on this machine."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"rclone") and b"copyto" in args and any(bucket.encode() in a for a in args):
            return True
    return False


def test_a_server_killed_during_the_upload_fails_the_run_until_the_next_one(fleet, tmp_path):
    server = Moto(tmp_path)
    server.start()
    try:
        env = environment_for(server, tmp_path)
        make_bucket(server, "killed")
        app = fleet.app_dir(SLUG)
        add_rooms(migrated(app, env, app / "instance"), [f"room {i} " + "x" * 50 for i in range(4000)])
        settings = {"BACKUP_OFFSITE": f"offsite:killed/{SLUG}"}
        # About 600 kB at 100 kB/s: the upload lasts seconds, and the server dies within it.
        run = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "backup"], cwd=app,
                               env=dict(env, RCLONE_BWLIMIT="100k", **settings),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not rclone_uploading("killed"):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        time.sleep(1)
        server.kill()
        out, err = run.communicate(timeout=120)
        assert run.returncode == 1, out + err
        assert "Off-site copy failed" in err
        record = last(fleet)
        assert record["verified"] is True  # the local backup is good
        assert record["offsite"]["ok"] is False and record["offsite"]["checksum"] is None
        assert "rclone copyto exited" in record["offsite"]["error"]
        assert record["last_offsite"] is None

        checked = status_check(fleet, tmp_path / "root")
        assert checked.exit_code == 1, checked.output
        lines = checked.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{SLUG}: off-site copy failed ("), lines
        assert "rclone copyto exited" in lines[0]

        server.start()  # a new, empty server on the same port
        make_bucket(server, "killed")
        done = backup(fleet, env, **settings)
        assert done.returncode == 0, done.stderr
        record = last(fleet)
        assert record["offsite"]["ok"] is True
        assert record["last_offsite"]["remote"] == record["offsite"]["remote"]
        checked = status_check(fleet, tmp_path / "root")
        assert checked.exit_code == 0, checked.output
        assert checked.output.strip().splitlines() == [
            "1 vertical checked: backups, off-site copies, services and certificates are fine"]
    finally:
        if server.proc.poll() is None:
            server.kill()


# -- drills -----------------------------------------------------------------------------


def table_digests(database: Path) -> dict[str, tuple[int, str]]:
    """(rows, sha256 of every row in id order) per table."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        found = {}
        for name in names:
            rows = db.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
            found[name] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        return found
    finally:
        db.close()


def write_settings(root: Path, slug: str, env: dict, folder: str) -> None:
    """/etc/vgen/<slug>.env under root, as the founder sets off-site copies up on a host."""
    path = root / "etc/vgen" / f"{slug}.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# off-site copies\nBACKUP_OFFSITE={folder}\nRCLONE_CONFIG=\"{env['RCLONE_CONFIG']}\"\n")


def test_drill_restores_the_latest_copy_exactly_and_names_a_corrupt_one(
        fleet, template_repo, moto, rclone_env, tmp_path, monkeypatch):
    make_bucket(moto, "drill")
    render_app(template_repo, example_answers("honeybees"), fleet.out / "honeybees")
    root = tmp_path / "root"
    # vgen's own environment: RCLONE_CONFIG comes from each vertical's settings file.
    monkeypatch.delenv("RCLONE_CONFIG", raising=False)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # see environment_for
    lives = {}
    for slug in (SLUG, "honeybees"):
        app = fleet.app_dir(slug)
        database = migrated(app, rclone_env, app / "instance")
        if slug == SLUG:
            add_rooms(database, ["cellar", "cave", "cooler"])
        write_settings(root, slug, rclone_env, f"offsite:drill/{slug}")
        done = backup(fleet, rclone_env, slug, BACKUP_OFFSITE=f"offsite:drill/{slug}")
        assert done.returncode == 0, done.stderr
        lives[slug] = database

    results = {r.slug: r for r in drill.drill(fleet, None, root)}
    assert set(results) == {SLUG, "honeybees"}
    assert all(r.verified for r in results.values()), [r.problems for r in results.values()]
    assert results[SLUG].tables["aging_room"] == 3
    # The copy the drill checked, fetched again: the live data exactly, table by table.
    fetched = tmp_path / "fetched.db"
    rclone(rclone_env, "copyto", results[SLUG].remote, str(fetched))
    assert table_digests(fetched) == table_digests(lives[SLUG])
    assert table_digests(fetched)["aging_room"][0] == 3

    runner = CliRunner()
    shown = runner.invoke(cli.main, ["--project", str(fleet.root), "drill", "--all", "--out", str(fleet.out),
                                     "--root", str(root)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.strip().splitlines()
    assert lines[0].startswith(f"{SLUG}: verified: offsite:drill/{SLUG}/{SLUG}-")
    assert " old, " in lines[0] and " bytes, " in lines[0] and "as recorded" in lines[0]
    assert lines[1].startswith("honeybees: verified: ") and lines[-1] == "2 verified"

    # Garbage where the honeybees copy was: the drill names it, and only it.
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto.port}", region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    key = results["honeybees"].remote.split(":", 1)[1].split("/", 1)[1]
    s3.put_object(Bucket="drill", Key=key, Body=os.urandom(results["honeybees"].size))
    shown = runner.invoke(cli.main, ["--project", str(fleet.root), "drill", "--all", "--out", str(fleet.out),
                                     "--root", str(root)])
    assert shown.exit_code == 1, shown.output
    lines = shown.output.strip().splitlines()
    assert lines[0].startswith(f"{SLUG}: verified: ")
    assert lines[1].startswith(f"honeybees: FAILED: offsite:drill/{key}, ")
    assert "differs from the one recorded at backup time" in lines[1]
    assert "not a readable SQLite database" in lines[1]
    assert lines[2] == "1 of 2 failed: honeybees"
    assert table_digests(lives["honeybees"])  # the live database is untouched and sound


# -- alarms -----------------------------------------------------------------------------

BACKUP_AT = """
import datetime, sys
sys.path.insert(0, ".")
from app.backup import run_backup

hours_ago = float(sys.argv[3])
now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=hours_ago)
record = run_backup(sys.argv[1], sys.argv[2], now=now)
assert record["verified"], record
"""


def backup_hours_ago(project: Project, env: dict, hours: float, slug: str = SLUG) -> None:
    """A real nightly backup, as if it had run `hours` ago (the backup's own clock)."""
    app = project.app_dir(slug)
    data = app / "instance"
    migrated(app, env, data)
    subprocess.run([sys.executable, "-c", BACKUP_AT, str(data / f"{slug}.db"), str(data / "backups"), str(hours)],
                   cwd=app, env=env, check=True, capture_output=True, timeout=120)


def certificate(root: Path, domain: str, days: int) -> Path:
    """A self-signed certificate where certbot keeps the domain's, valid for `days`."""
    path = root / "etc/letsencrypt/live" / domain / "cert.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={domain}",
                    "-days", str(days), "-keyout", str(path.with_name("privkey.pem")), "-out", str(path)],
                   check=True, capture_output=True, timeout=60)
    return path


DOMAIN = "cheesemaking.example.com"  # verticals/cheesemaking.toml


def no_backup(project, env, root):
    pass


def stale_backup(project, env, root):
    backup_hours_ago(project, env, 27)


def offsite_missing(project, env, root):
    backup_hours_ago(project, env, 1)
    write_settings(root, SLUG, env, f"offsite:nowhere/{SLUG}")  # set, but no run copied it


def offsite_stale(project, env, root):
    write_settings(root, SLUG, env, f"offsite:{BUCKET}/{SLUG}")
    app = project.app_dir(SLUG)
    migrated(app, env, app / "instance")
    done = backup(project, env, BACKUP_OFFSITE=f"offsite:{BUCKET}/{SLUG}")  # copied now...
    assert done.returncode == 0, done.stderr
    record = last(project)
    record["last_offsite"]["time"] = "2020-01-01T00:00:00Z"  # ...and then not for years
    (app / "instance/backups/last.json").write_text(json.dumps(record))


def certificate_expiring(project, env, root):
    backup_hours_ago(project, env, 1)
    certificate(root, DOMAIN, 5)


@pytest.mark.parametrize("condition, line", [
    (no_backup, f"{SLUG}: no verified backup yet"),
    (stale_backup, f"{SLUG}: last verified backup is 27 hours old ("),
    (offsite_missing, f"{SLUG}: no off-site copy yet (BACKUP_OFFSITE is set)"),
    (offsite_stale, f"{SLUG}: last off-site copy is "),
    (certificate_expiring, f"{SLUG}: certificate for {DOMAIN} expires in "),
])
def test_each_alarm_is_one_line_and_exit_1(fleet, rclone_env, tmp_path, condition, line):
    root = tmp_path / "root"
    root.mkdir()
    condition(fleet, rclone_env, root)
    checked = status_check(fleet, root)
    assert checked.exit_code == 1, checked.output
    lines = checked.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines


def test_a_healthy_fleet_is_one_line_and_exit_0(fleet, template_repo, moto, rclone_env, tmp_path):
    make_bucket(moto, "healthy")
    root = tmp_path / "root"
    render_app(template_repo, example_answers("honeybees"), fleet.out / "honeybees")
    for slug in (SLUG, "honeybees"):
        write_settings(root, slug, rclone_env, f"offsite:healthy/{slug}")
        app = fleet.app_dir(slug)
        migrated(app, rclone_env, app / "instance")
        done = backup(fleet, rclone_env, slug, BACKUP_OFFSITE=f"offsite:healthy/{slug}")
        assert done.returncode == 0, done.stderr
    certificate(root, DOMAIN, 60)  # honeybees has no certificate: no HTTPS yet, no alarm
    checked = status_check(fleet, root)
    assert checked.exit_code == 0, checked.output
    assert checked.output.strip().splitlines() == [
        "2 verticals checked: backups, off-site copies, services and certificates are fine"]

    # The same fleet, seen later and with the service failed, in the library's words.
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=50)
    checked, problems = alarms.check(fleet, root, now=later, services={SLUG: "failed", "honeybees": "active"})
    assert checked == [SLUG, "honeybees"]
    assert [str(p) for p in problems if p.slug == SLUG] == [
        f"{SLUG}: last verified backup is 50 days old ({last(fleet)['time']}, backup)",
        f"{SLUG}: last off-site copy is 50 days old ({last(fleet)['time']}, {last(fleet)['offsite']['remote']})",
        f"{SLUG}: service failed (systemctl status {SLUG}.service {SLUG}.socket)",
        f"{SLUG}: certificate for {DOMAIN} expires in 10 days, on "
        f"{certs.read_expiry(root / 'etc/letsencrypt/live' / DOMAIN / 'cert.pem'):%Y-%m-%d %H:%M} UTC "
        f"({root / 'etc/letsencrypt/live' / DOMAIN / 'cert.pem'})",
    ]
    assert [p.message for p in problems if p.slug == "honeybees"] == [
        "last verified backup is 50 days old (" + last(fleet, "honeybees")["time"] + ", backup)",
        "last off-site copy is 50 days old (" + last(fleet, "honeybees")["time"] + ", "
        + last(fleet, "honeybees")["offsite"]["remote"] + ")",
    ]
