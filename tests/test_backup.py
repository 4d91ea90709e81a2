"""`flask --app app backup` and `restore` on a generated app, with real processes.

Each test runs the app's own CLI in a subprocess, as cron (through the backup unit) and
the founder would, against a DATA_DIR of its own.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from conftest import mailed_link, render_app, sample_answers, wait_for

REPO = Path(__file__).resolve().parent.parent
NOW = "2024-01-31T08:30:00Z"


@pytest.fixture(scope="module")
def app_dir(template_repo, tmp_path_factory):
    """The sample app (every field type), rendered as vgen renders it."""
    return render_app(template_repo, sample_answers(), tmp_path_factory.mktemp("apps") / "sample")


class App:
    """The rendered app with a DATA_DIR of its own; runs its CLI in subprocesses."""

    def __init__(self, path: Path, data_dir: Path):
        self.path = path
        self.data_dir = data_dir
        self.database = data_dir / "sample.db"
        self.backups = data_dir / "backups"
        self.env = dict(os.environ, DATA_DIR=str(data_dir))
        self.env.pop("BACKUP_OFFSITE_COMMAND", None)
        self.env.pop("BACKUP_OFFSITE", None)

    def flask(self, *args, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=self.path,
            env=dict(self.env, **(env or {})),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def backup(self, **env) -> Path:
        done = self.flask("backup", env=env)
        assert done.returncode == 0, done.stderr
        return Path(self.last()["file"])

    def last(self) -> dict:
        return json.loads((self.backups / "last.json").read_text())

    def connect(self, path=None) -> sqlite3.Connection:
        return sqlite3.connect(path or self.database)

    def sql(self, script: str) -> None:
        """Run SQL statements on the live database, as another program would."""
        db = self.connect()
        try:
            db.executescript(script)
        finally:
            db.close()

    def restored(self, path: Path) -> None:
        done = self.flask("restore", str(path))
        assert done.returncode == 0, done.stderr

    def dump(self, path=None) -> list[str]:
        db = self.connect(path)
        try:
            return list(db.iterdump())
        finally:
            db.close()


@pytest.fixture(scope="module")
def seeded(app_dir, tmp_path_factory) -> Path:
    """A DATA_DIR migrated by the app and filled with 20000 rows, made once per module."""
    app = App(app_dir, tmp_path_factory.mktemp("seeded") / "data")
    done = app.flask("migrate")
    assert done.returncode == 0, done.stderr
    db = app.connect()
    db.execute('INSERT INTO "account" ("id", "name") VALUES (1, \'Acme\')')
    db.executemany(
        'INSERT INTO "aging_room" ("account_id", "name", "temperature_c", "created_at", "updated_at")'
        " VALUES (1, ?, ?, ?, ?)",
        [(f"room {i:05d} " + "x" * 40, i % 300, NOW, NOW) for i in range(20000)],
    )
    db.commit()
    db.close()  # the last connection: the WAL is checkpointed into the file
    return app.data_dir


@pytest.fixture
def app(app_dir, seeded, tmp_path):
    """The app with its own copy of the seeded DATA_DIR."""
    shutil.copytree(seeded, tmp_path / "data")
    return App(app_dir, tmp_path / "data")


def integrity(path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def ids(path, table="aging_room") -> set[int]:
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute(f'SELECT "id" FROM "{table}"')}
    finally:
        db.close()


# -- backup -----------------------------------------------------------------------

WRITER = """
import datetime, os, sys
sys.path.insert(0, ".")
from app.db import connect  # the app's own connection: WAL, busy_timeout

db = connect(sys.argv[1])
i = 0
while not os.path.exists(sys.argv[2]):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    db.execute(
        'INSERT INTO "aging_room" ("account_id", "name", "created_at", "updated_at") VALUES (1, ?, ?, ?)',
        (f"written {i}", now, now),
    )
    db.commit()
    i += 1
print(i)
"""


@pytest.mark.slow
def test_backup_under_load_holds_every_committed_row(app, tmp_path):
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(app.database), str(stop)],
        cwd=app.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        results = []
        for _ in range(3):
            time.sleep(0.3)
            committed = ids(app.database)  # everything committed before this backup began
            path = app.backup()
            results.append((committed, path, app.last()))
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and not err, err  # never "database is locked"
    assert int(out) > 100, "the writer should have committed rows during the backups"
    for committed, path, last in results:
        assert last["verified"] is True and last["error"] is None
        assert last["size"] == path.stat().st_size and path.name.startswith("sample-")
        assert integrity(path) == "ok"
        assert committed <= ids(path)
        assert last["tables"]["aging_room"] == len(ids(path))
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert not Path(f"{path}-wal").exists()  # a self-contained file
    assert len(ids(app.database)) == 20000 + int(out)
    assert not list(app.backups.glob(".tmp-*"))


def test_backup_records_a_failure_and_keeps_the_last_good(app):
    good = app.backup()
    done = app.flask("backup", env={"BACKUP_OFFSITE_COMMAND": "false"})
    assert done.returncode == 1 and "Off-site copy failed" in done.stderr
    last = app.last()
    assert last["verified"] is True and "exited with 1" in last["error"]
    assert last["last_good"]["file"] == last["file"] != str(good)

    app.database.unlink()
    done = app.flask("backup")
    assert done.returncode == 1 and "no database" in done.stderr
    last = app.last()
    assert last["verified"] is False and last["file"] is None
    assert last["last_good"]["file"] != str(good) and Path(last["last_good"]["file"]).exists()


def file_size_limit(limit: int):
    """For subprocess.run's preexec_fn: no file the process writes may grow past
    `limit` bytes (writes fail with EFBIG, as on a full disk), without SIGXFSZ killing it."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_file_size


def test_a_backup_that_runs_out_of_space_leaves_no_file_behind(app):
    good = app.backup()
    size = app.database.stat().st_size
    assert size > 1_000_000
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "backup"], cwd=app.path, env=app.env,
        capture_output=True, text=True, timeout=120, preexec_fn=file_size_limit(size // 2),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Error:" in done.stderr
    left = sorted(p.name for p in app.backups.iterdir() if p.name != ".lock")
    assert left == sorted([good.name, "last.json"]), left  # no temporary file
    assert app.last()["verified"] is False and app.last()["last_good"]["file"] == str(good)


def test_migrate_names_a_database_file_the_service_cannot_write(app):
    """A -shm file left read-only (say by a root process during an outage): migrate,
    which the unit runs before it serves, says which file, and changes nothing."""
    # The check is the service user's: as root, the app runs as nobody, from a folder
    # nobody can read (pytest's own temporary folders are root's alone).
    as_root = os.getuid() == 0
    place = Path(tempfile.mkdtemp(prefix="vgen-writable-"))
    try:
        os.chmod(place, 0o755)
        shutil.copytree(app.path, place / "app")
        data = place / "data"
        shutil.copytree(app.data_dir, data)
        shm = data / "sample.db-shm"
        shm.write_bytes(b"")
        run_as = []
        if as_root:
            subprocess.run(["chown", "-R", "65534:65534", str(data)], check=True)
            run_as = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

        def flask(*args):
            return subprocess.run([*run_as, sys.executable, "-m", "flask", "--app", "app", *args],
                                  cwd=place / "app", env=dict(app.env, DATA_DIR=str(data)),
                                  capture_output=True, text=True, timeout=120)

        shm.chmod(0o444)
        done = flask("migrate")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "This user cannot write the database" in done.stderr
        assert f"{shm} is not writable by uid" in done.stderr
        assert str(data / "sample.db") + " " not in done.stderr  # only the file at fault
        shm.chmod(0o644)
        done = flask("migrate")
        assert done.returncode == 0, done.stdout + done.stderr
        write = subprocess.run([*run_as, sys.executable, "-c",
                                "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
                                "db.execute(\"INSERT INTO account (name) VALUES ('x')\"); db.commit()",
                                str(data / "sample.db")], capture_output=True, text=True)
        assert write.returncode == 0, write.stderr
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_offsite_command_gets_the_verified_file(app, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    path = app.backup(BACKUP_OFFSITE_COMMAND=f"sh -c 'cp \"$0\" {remote}/'")
    assert (remote / path.name).read_bytes() == path.read_bytes()
    assert app.last()["offsite_command"]["ok"] is True


ROTATE = """
import datetime, json, sys
sys.path.insert(0, ".")
from pathlib import Path
from app.backup import rotate

folder = Path(sys.argv[1])
newest = datetime.datetime(2024, 3, 15, 3, 17)
for days in range(400):
    taken = newest - datetime.timedelta(days=days)
    (folder / f"sample-{taken:%Y%m%dT%H%M%SZ}.db").touch()
(folder / "sample-20240315T031700Z-1.db").touch()  # a second backup in the same second
(folder / "pre-restore-sample-20200101T000000Z.db").touch()  # never rotated
(folder / "notes.txt").touch()
rotate(folder, "sample")
print(json.dumps(sorted(p.name for p in folder.iterdir())))
"""


def test_rotation_keeps_7_daily_4_weekly_12_monthly(app_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", ROTATE, str(tmp_path)], cwd=app_dir, capture_output=True, text=True, check=True
    )
    kept = {name[7:15] for name in json.loads(done.stdout) if name.startswith("sample-")}
    daily = {f"202403{d:02d}" for d in range(9, 16)}
    weekly = {"20240303", "20240225"}  # newest of ISO weeks 9 and 8 (weeks 11, 10 are daily)
    monthly = {"20240229", "20240131", "20231231", "20231130", "20231031", "20230930",
               "20230831", "20230731", "20230630", "20230531", "20230430"}
    assert kept == daily | weekly | monthly
    names = json.loads(done.stdout)
    # Everything from the newest backup's last 24 hours stays, whatever the slots say.
    assert "sample-20240315T031700Z-1.db" in names and "sample-20240315T031700Z.db" in names
    assert "pre-restore-sample-20200101T000000Z.db" in names and "notes.txt" in names


# -- restore ----------------------------------------------------------------------


def test_restore_round_trip_is_exact(app):
    before = app.dump()
    path = app.backup()
    db = app.connect()
    db.execute('UPDATE "aging_room" SET "temperature_c" = 7 WHERE "id" < 100')
    db.execute('DELETE FROM "aging_room" WHERE "id" BETWEEN 500 AND 600')
    db.execute("""INSERT INTO "aging_room" ("account_id", "name", "created_at", "updated_at") VALUES (1, 'new', 'x', 'x')""")
    db.commit()
    db.close()
    changed = app.dump()
    assert changed != before

    done = app.flask("restore", str(path))
    assert done.returncode == 0, done.stderr
    assert app.dump() == before == app.dump(path)
    assert integrity(app.database) == "ok"
    [safety] = app.backups.glob("pre-restore-sample-*.db")
    assert app.dump(safety) == changed
    assert "Saved the current database as" in done.stdout


def test_restore_a_copy_made_with_cp_includes_its_wal(app, tmp_path):
    """cp of a live database leaves recent commits in the -wal file beside it."""
    live = app.connect()
    live.execute("PRAGMA wal_autocheckpoint = 0")  # keep the rows below in the -wal
    live.execute("""INSERT INTO "aging_room" ("account_id", "name", "created_at", "updated_at") VALUES (1, 'only in the wal', 'x', 'x')""")
    live.commit()
    copy = tmp_path / "copy.db"
    copy.write_bytes(app.database.read_bytes())
    Path(f"{copy}-wal").write_bytes(Path(f"{app.database}-wal").read_bytes())
    expected = ids(app.database)
    live.execute('DELETE FROM "aging_room" WHERE "id" > 10')
    live.commit()
    live.close()

    done = app.flask("restore", str(copy))
    assert done.returncode == 0, done.stderr
    assert ids(app.database) == expected
    assert app.connect().execute("""SELECT count(*) FROM "aging_room" WHERE "name" = 'only in the wal'""").fetchone()[0] == 1


def test_restore_brings_an_older_backup_to_the_current_schema(app, tmp_path):
    """A backup from before a column and a table existed: restored, then migrated, so
    the app's pages never meet a schema its code does not expect."""
    path = app.backup()
    old = tmp_path / "old.db"
    old.write_bytes(path.read_bytes())
    db = sqlite3.connect(old)
    db.executescript(
        """
        CREATE TABLE "aging_room_old" AS SELECT "id", "account_id", "name", "created_at", "updated_at" FROM "aging_room";
        DROP TABLE "aging_room";
        ALTER TABLE "aging_room_old" RENAME TO "aging_room";
        DROP TABLE "class";
        """
    )
    db.close()

    done = app.flask("restore", str(old))
    assert done.returncode == 0, done.stderr
    assert "Brought it to this app's schema first" in done.stdout
    assert ids(app.database) == ids(path)
    wanted = app.connect(path)
    live = app.connect()
    for table in ("aging_room", "class"):
        assert live.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (table,)).fetchone() == wanted.execute(
            "SELECT sql FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
    assert live.execute('SELECT count(*) FROM "aging_room" WHERE "temperature_c" IS NULL').fetchone()[0] == 20000


def test_restore_takes_a_backup_with_another_page_size(app, tmp_path):
    path = app.backup()
    big = tmp_path / "big.db"
    big.write_bytes(path.read_bytes())
    db = sqlite3.connect(big)
    db.execute("PRAGMA page_size = 65536")
    db.execute("VACUUM")
    db.close()
    done = app.flask("restore", str(big))
    assert done.returncode == 0, done.stderr
    assert app.dump() == app.dump(path)


def test_restore_while_the_app_writes_succeeds(app, tmp_path):
    """Writes that land right after the restore change the row counts; that is no failure."""
    path = app.backup()
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(app.database), str(stop)],
        cwd=app.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.3)
        done = app.flask("restore", str(path))
        time.sleep(0.3)
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and not err, err
    assert done.returncode == 0, done.stderr
    assert ids(path) <= ids(app.database)
    assert integrity(app.database) == "ok"


def test_backups_after_an_entity_left_the_spec_restore(app, template_repo, tmp_path):
    """migrate keeps the table of an entity removed from the spec, with its data: every
    backup taken since holds it, and restores."""
    answers = sample_answers()
    answers["entities"] = [e for e in answers["entities"] if e["name"] != "class"]
    db = app.connect()
    db.execute("""INSERT INTO "class" ("account_id", "title", "starts_at", "created_at", "updated_at") VALUES (1, 'kept', '2024-01-01T08:00:00', 'x', 'x')""")
    db.commit()
    db.close()
    later = App(render_app(template_repo, answers, tmp_path / "later"), app.data_dir)
    done = later.flask("migrate")
    assert done.returncode == 0, done.stderr
    assert 'table "class" (1 row) is no longer in the spec; its data is kept' in done.stdout
    before = later.dump()
    path = later.backup()
    later.sql('DELETE FROM "aging_room" WHERE "id" > 10')
    later.restored(path)
    assert later.dump() == before
    assert ids(later.database, "class") == {1}


def test_a_founder_table_never_stops_the_nightly_backup(app, tmp_path):
    """A table of the founder's own (app/custom.py) is backed up, verified and restored;
    even in a database no migration marked, the backup is taken, with a warning."""
    app.sql("""CREATE TABLE "founder_notes" ("id" INTEGER PRIMARY KEY, "body" TEXT);
               INSERT INTO "founder_notes" ("body") VALUES ('order more rennet');""")
    path = app.backup()
    last = app.last()
    assert last["verified"] is True and last["warning"] is None and last["tables"]["founder_notes"] == 1
    app.sql('DELETE FROM "founder_notes"')
    app.restored(path)
    assert ids(app.database, "founder_notes") == {1}

    app.sql("PRAGMA application_id = 0")  # as before migrate marked databases
    done = app.flask("backup")
    assert done.returncode == 0, done.stderr
    assert "Backup verified" in done.stdout
    assert "Warning: restore would refuse this backup as it is: it is not a backup of this app: unknown tables founder_notes" in done.stderr
    last = app.last()
    assert last["verified"] is True and Path(last["file"]).is_file() and "founder_notes" in last["warning"]


def foreign_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript('CREATE TABLE "account" (id); CREATE TABLE "user" (id); CREATE TABLE "hive" (id);')
    db.close()


def not_an_app_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE notes (id, body); INSERT INTO notes VALUES (1, 'hello');")
    db.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated mid-page", "not a readable SQLite database|truncated"),
        ("truncated at a page boundary", "truncated"),
        ("text", "not an SQLite database"),
        ("empty", "not an SQLite database"),
        ("another app's", "unknown tables hive"),
        ("another vertical's", "it is the database of another app: its PRAGMA application_id is 12345"),
        ("no app tables", "no account, user table"),
        ("missing", "no such file"),
        ("with a trigger", "trigger wipe"),
        ("with a view", "view rooms"),
    ],
)
def test_restore_refuses_a_bad_file_and_changes_nothing(app, tmp_path, kind, message):
    good = app.backup().read_bytes()
    bad = tmp_path / "bad.db"
    if kind == "truncated mid-page":
        bad.write_bytes(good[: len(good) // 2 + 100])
    elif kind == "truncated at a page boundary":
        bad.write_bytes(good[: (len(good) // 4096 // 2) * 4096])
    elif kind == "text":
        bad.write_text("id,name\n1,Acme\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "another app's":
        foreign_database(bad)
    elif kind == "another vertical's":  # every table of this app, marked by another
        bad.write_bytes(good)
        db = sqlite3.connect(bad)
        db.execute("PRAGMA application_id = 12345")
        db.close()
    elif kind == "no app tables":
        not_an_app_database(bad)
    elif kind in ("with a trigger", "with a view"):
        bad.write_bytes(good)
        db = sqlite3.connect(bad)
        if kind == "with a trigger":
            db.execute('CREATE TRIGGER "wipe" AFTER INSERT ON "aging_room" BEGIN DELETE FROM "aging_room"; END')
        else:
            db.execute('CREATE VIEW "rooms" AS SELECT * FROM "aging_room"')
        db.close()
    before = snapshot(app.data_dir)
    dump = app.dump()

    done = app.flask("restore", str(bad))
    assert done.returncode == 1
    assert re.search(message, done.stderr) and "nothing was changed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(app.data_dir) == before  # not one byte, not one new file
    assert app.dump() == dump


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# -- kill -9 in the middle of writes ------------------------------------------------


def deny_write_execute() -> None:
    """What the unit's MemoryDenyWriteExecute=yes enforces, set by prctl(PR_SET_MDWE)
    in the child before exec (Linux 6.3+, inherited by the workers; else a no-op)."""
    import ctypes

    ctypes.CDLL(None).prctl(65, 1, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A tiny HTTP client with one cookie jar, for the app's real forms (CSRF included)."""

    def __init__(self, port: int, address: str = "127.0.0.1", host: str | None = None, timeout: float = 10):
        self.port, self.address, self.host, self.timeout = port, address, host, timeout
        self.cookies: dict[str, str] = {}

    def request(self, method, path, form=None):
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        try:
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
            if self.host:  # the name nginx picks the vertical's site by
                headers["Host"] = self.host
            body = None
            if form is not None:
                body = urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self.cookies[key] = rest.split(";")[0]
            return response.status, response.getheader("Location", ""), response.read().decode()
        finally:
            conn.close()

    def csrf(self, path) -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, page
        return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


def worker_pids(master: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(entry))
    return children


@pytest.mark.slow
def test_kill_9_of_workers_loses_no_acknowledged_write(app_dir, tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    env = dict(os.environ, DATA_DIR=str(data_dir), GUNICORN_BIND=f"127.0.0.1:{port}")
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app_dir, env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
        cwd=app_dir, env=env, preexec_fn=deny_write_execute, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gunicorn.log", "w"),
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", timeout=60)
        browser = Browser(port)
        token = browser.csrf("/signup")
        password = "correct horse battery"
        status, _, page = browser.request(
            "POST", "/signup",
            {"csrf_token": token, "account": "Acme", "email": "owner@example.com", "password": password, "confirm": password},
        )
        assert status == 200, page
        link = mailed_link(data_dir, "owner@example.com")
        status, _, page = browser.request("POST", link, {"csrf_token": browser.csrf(link)})
        assert status == 302, page
        token = browser.csrf("/aging-rooms/new")

        acknowledged: list[str] = []
        stop = threading.Event()

        def write(n: int) -> None:
            i = 0
            while not stop.is_set():
                name = f"room {n}-{i}"
                i += 1
                try:
                    status, location, _ = browser.request("POST", "/aging-rooms/new", {"csrf_token": token, "name": name})
                except (OSError, http.client.HTTPException):
                    continue  # killed mid-request: no answer, no promise
                if status in (302, 303) and re.search(r"/aging-rooms/\d+$", location):
                    acknowledged.append(name)

        writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for t in writers:
            t.start()
        kills = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            time.sleep(0.4)
            for pid in worker_pids(server.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        stop.set()
        for t in writers:
            t.join(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert kills >= 5 and len(acknowledged) > 20, (kills, len(acknowledged))
    database = data_dir / "sample.db"
    assert integrity(database) == "ok"
    db = sqlite3.connect(database)
    stored = {row[0] for row in db.execute('SELECT "name" FROM "aging_room"')}
    db.close()
    assert set(acknowledged) <= stored


