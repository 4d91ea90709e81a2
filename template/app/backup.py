"""Backups: `flask --app app backup` and `flask --app app restore FILE`.

backup  takes an online copy of the live database through SQLite's backup API (never a
        file copy: the database is in WAL mode and being written), verifies the copy,
        renames it into DATA_DIR/backups, rotates old backups (7 daily, 4 weekly,
        12 monthly), runs the optional off-site command and records the run in
        DATA_DIR/backups/last.json, which `vgen status` reads. Should restore object
        to the copy (see check_app_database), it is still kept, with a warning.
restore verifies a backup file (with the -wal file beside it, if any) on a private
        copy, brings that copy to the app's current schema (migrate.py), takes a
        safety backup of the current database, then copies it into the live database
        through the backup API: one write transaction, so the app can keep running and
        never sees half a database, nor a schema its code does not expect.

Set BACKUP_OFFSITE_COMMAND (for example `rclone copyto --config /etc/vgen/rclone.conf`
or `aws s3 cp`) to copy each verified backup elsewhere: the command is split like a
shell would split it, and the backup file's path is appended as its last argument.
"""
import contextlib
import datetime
import fcntl
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from . import SLUG
from .db import connect, read_schema

KEEP_DAILY = 7
KEEP_WEEKLY = 4
KEEP_MONTHLY = 12
OFFSITE_TIMEOUT = 3600  # seconds

SQLITE_HEADER = b"SQLite format 3\x00"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# The app's own tables besides the entities (schema_auth.sql); internal ones start with app_.
SYSTEM_TABLES = {"account", "user", "login_attempt"}
REQUIRED_TABLES = {"account", "user"}


def is_entity_table(name):
    """Not one of the app's own tables (schema_auth.sql, app_*)."""
    return name not in SYSTEM_TABLES and not name.startswith("app_")


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why."""


def init_app(app):
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)


@click.command("backup")
@with_appcontext
def backup_command():
    """Take, verify and rotate a backup of the database."""
    result = run_backup(
        current_app.config["DATABASE"],
        backup_dir(),
        offsite_command=os.environ.get("BACKUP_OFFSITE_COMMAND", ""),
    )
    if result["error"]:
        raise click.ClickException(result["error"])
    click.echo(
        f"Backup verified: {result['file']} ({result['size']} bytes, {rows_in(result['tables'])})"
    )
    if result["warning"]:
        click.echo(f"Warning: {result['warning']}", err=True)
    if result["removed"]:
        click.echo(f"Rotation removed {len(result['removed'])} old backup(s).")
    if result["offsite"]:
        click.echo(f"Off-site copy done: {result['offsite']['command']}")


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@with_appcontext
def restore_command(file):
    """Verify a backup FILE, save the current database, then restore FILE into it."""
    try:
        result = restore(
            current_app.config["DATABASE"], file, backup_dir(), schema_tables()
        )
    except (BackupError, sqlite3.Error) as e:
        raise click.ClickException(str(e))
    if result["safety_backup"]:
        click.echo(f"Saved the current database as {result['safety_backup']}")
    click.echo(f"Restored {file} ({rows_in(result['tables'])}).")
    if result["migrated"]:
        click.echo("Brought it to this app's schema first: " + "; ".join(result["migrated"]) + ".")


def rows_in(tables):
    """{table: rows} -> "1 row in 11 tables"."""
    rows = sum(tables.values())
    return f"{rows} row{'' if rows == 1 else 's'} in {len(tables)} table{'' if len(tables) == 1 else 's'}"


def backup_dir():
    return Path(current_app.config["DATA_DIR"]) / "backups"


def schema_tables():
    """The tables the app's schema creates: what "this app's database" means."""
    memory = sqlite3.connect(":memory:")
    try:
        memory.executescript(read_schema())
        return set(table_counts(memory))
    finally:
        memory.close()


# -- backup -----------------------------------------------------------------------


def run_backup(database, directory, offsite_command="", now=None):
    """Back up, rotate, copy off-site and record the run in last.json; returns the record.

    Never raises for a failed backup: the error is in the record (and in last.json).
    Never refuses to copy the live data either: what restore would object to in the copy
    is only a warning in the record.
    """
    directory = Path(directory)
    started = time.monotonic()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    record = {
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "file": None,
        "size": None,
        "verified": False,
        "tables": {},
        "removed": [],
        "offsite": None,
        "warning": None,
        "error": None,
    }
    try:
        make_private_dir(directory)
        with locked(directory):
            name = unique_name(directory, f"{Path(database).stem}-{now.strftime(STAMP_FORMAT)}")
            path, counts = take_backup(database, directory / name)
            record.update(file=str(path), size=path.stat().st_size, verified=True, tables=counts)
            record["warning"] = restore_warning(path, counts, database)
            record["removed"] = [str(p) for p in rotate(directory, Path(database).stem)]
            if offsite_command:
                record["offsite"] = run_offsite(offsite_command, path)
    except (BackupError, sqlite3.Error, OSError) as e:
        record["error"] = f"{'Off-site copy' if record['verified'] else 'Backup'} failed: {e}"
    record["duration_s"] = round(time.monotonic() - started, 3)
    write_last(directory, record)
    return record


def restore_warning(path, counts, live):
    """What restore would object to in the backup at path, as a warning; None if nothing.

    It is what restore checks first (check_app_database). The backup is kept whatever
    it says: a nightly backup never refuses to copy the customers' data.
    """
    try:
        check_app_database(path, set(counts), schema_tables(), live)
    except (BackupError, sqlite3.Error) as e:
        return (
            f"restore would refuse this backup as it is: {e}. It is kept all the same; "
            "`flask --app app migrate` marks the live database as this app's, so that the "
            "next backups are restored without a question"
        )
    return None


def take_backup(database, target):
    """Copy the live database into target, verified; returns (target, row counts).

    The row counts and the copy come from one read transaction on the source, so they
    see the same snapshot while other connections keep committing (WAL lets them).
    The copy is written to a temporary file, fsynced and verified before it is renamed
    into place, so a file named like a backup is always a complete, checked one.
    """
    database, target = Path(database), Path(target)
    if not database.exists():
        raise BackupError(f"no database at {database} (run `flask --app app migrate`)")
    tmp = target.with_name(f".tmp-{target.name}")
    source = connect(str(database))
    try:
        source.execute("BEGIN")  # deferred: the first read below pins the snapshot
        counts = table_counts(source)
        copy = sqlite3.connect(str(tmp))
        try:
            # pages=-1: the whole database in one step, inside our read transaction.
            source.backup(copy)
            # A self-contained file: no -wal/-shm beside it.
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
        source.rollback()
    finally:
        source.close()
    try:
        os.chmod(tmp, 0o600)
        fsync_file(tmp)
        try:
            got = verify(tmp)
        except BackupError as e:
            raise BackupError(f"the copy failed verification: {e}") from e
        if got != counts:
            raise BackupError(f"row counts differ: database {counts}, copy {got}")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target, counts


def verify(path):
    """Check that path is a sound SQLite database; returns its row count per table."""
    path = Path(path)
    check_header(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"integrity_check fails: {'; '.join(problems[:5])}")
            return table_counts(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise BackupError(f"it is not a readable SQLite database ({e})") from e


def check_header(path):
    """Refuse a file that is not an SQLite database, or is one cut short."""
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(SQLITE_HEADER):
        raise BackupError("it is not an SQLite database")
    # A file cut at a page boundary can still open; its header knows the real size.
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    # (The header's page count is valid when its two change counters agree.)
    pages = int.from_bytes(header[28:32], "big") if header[24:28] == header[92:96] else 0
    size = path.stat().st_size
    if len(header) < 100 or size < page_size * pages or size % page_size:
        raise BackupError(f"it is truncated ({size} bytes, {pages} pages of {page_size})")


def table_counts(db):
    names = [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {
        name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names
    }


def rotate(directory, stem):
    """Delete the backups that no daily, weekly or monthly slot keeps; returns them.

    Each slot (a day, an ISO week, a month) keeps its newest backup, for the 7 newest
    days, 4 newest weeks and 12 newest months that have one.
    """
    pattern = re.compile(rf"^{re.escape(stem)}-(\d{{8}}T\d{{6}}Z)(-\d+)?\.db$")
    backups = []
    for path in Path(directory).iterdir():
        match = pattern.match(path.name)
        if match:
            taken = datetime.datetime.strptime(match.group(1), STAMP_FORMAT)
            backups.append((taken, path.name, path))
    backups.sort(reverse=True)
    # Every backup of the last day stays too: a manual backup taken before some risky
    # change must not make the same night's backup disappear.
    keep = {path for taken, _, path in backups if backups[0][0] - taken < datetime.timedelta(days=1)}
    for bucket, count in (
        (lambda t: t.date(), KEEP_DAILY),
        (lambda t: t.isocalendar()[:2], KEEP_WEEKLY),
        (lambda t: (t.year, t.month), KEEP_MONTHLY),
    ):
        seen = []
        for taken, _, path in backups:  # newest first: each bucket keeps its newest
            key = bucket(taken)
            if key not in seen:
                if len(seen) == count:
                    break
                seen.append(key)
                keep.add(path)
    removed = [path for _, _, path in backups if path not in keep]
    for path in removed:
        path.unlink()
    if removed:
        fsync_dir(directory)
    return removed


def run_offsite(command, path):
    argv = shlex.split(command) + [str(path)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=OFFSITE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackupError(f"{argv[0]}: {e}") from e
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BackupError(
            f"{command!r} exited with {done.returncode}: {' / '.join(output) or 'no output'}"
        )
    return {"command": command, "ok": True}


def write_last(directory, record):
    """Write last.json atomically; it keeps the last good backup across failed runs."""
    path = Path(directory) / "last.json"
    previous = {}
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    if record["verified"]:
        record["last_good"] = {k: record[k] for k in ("time", "file", "size")}
    else:
        record["last_good"] = previous.get("last_good")
    try:
        make_private_dir(directory)
        tmp = path.with_name(".tmp-last.json")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(directory)
    except OSError:
        pass  # the backup's outcome still reaches the exit code and the journal


# -- restore ----------------------------------------------------------------------


def restore(database, file, directory, expected_tables):
    """Restore the backup file into the live database; raises BackupError on refusal.

    The file is checked and brought to this app's schema on a private copy first (see
    prepare). Then the current database is saved as pre-restore-<name>-<time>.db
    (never rotated), and the copy is written into the live database with the backup
    API: a single write transaction that running gunicorn workers see either entirely
    or not at all. Swapping files instead would leave the workers' open connections and
    the old -wal/-shm files pointing at the replaced database, losing or corrupting writes.
    """
    database, file, directory = Path(database), Path(file), Path(directory)
    if not file.is_file():
        raise BackupError(f"refusing to restore {file}: no such file; nothing was changed")
    make_private_dir(directory)
    now = datetime.datetime.now(datetime.timezone.utc).strftime(STAMP_FORMAT)
    with locked(directory):
        candidate = directory / f".tmp-restore-{now}.db"
        try:
            try:
                counts, migrated = prepare(
                    file, candidate, expected_tables, page_size_of(database), live=database
                )
            except (BackupError, sqlite3.Error) as e:
                raise BackupError(f"refusing to restore {file}: {e}; nothing was changed") from e
            safety = None
            if database.exists():
                name = unique_name(directory, f"pre-restore-{database.stem}-{now}")
                try:
                    safety, _ = take_backup(database, directory / name)
                except (BackupError, sqlite3.Error) as e:
                    raise BackupError(
                        f"could not save the current database first ({e}); nothing was "
                        f"changed. If it is damaged, stop the app, move {database} and "
                        "its -wal and -shm files aside, and restore again"
                    ) from e
            live = connect(str(database))
            try:
                source = sqlite3.connect(f"file:{candidate}?mode=ro", uri=True)
                try:
                    # Changes only when another connection commits (the app, serving).
                    version = live.execute("PRAGMA data_version").fetchone()[0]
                    try:
                        source.backup(live)
                    except sqlite3.Error as e:
                        raise BackupError(
                            f"could not write {file} into the database ({e}); it is unchanged, "
                            f"and saved as {safety}"
                        ) from e
                finally:
                    source.close()
                problems = [row[0] for row in live.execute("PRAGMA integrity_check")]
                live.execute("BEGIN")  # one snapshot: its counts and its data_version agree
                restored = table_counts(live)
                written_since = live.execute("PRAGMA data_version").fetchone()[0] != version
                live.rollback()
            finally:
                live.close()
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{candidate}{suffix}").unlink(missing_ok=True)
    # The app may already have written to the restored database (a login, a new record):
    # its row counts are then the backup's no longer, and only its integrity is checked.
    if problems != ["ok"] or (restored != counts and not written_since):
        raise BackupError(
            f"the restored database does not match {file}; the previous one is {safety}"
        )
    return {
        "safety_backup": str(safety) if safety else None,
        "tables": counts,
        "migrated": migrated,
    }


def page_size_of(database):
    """The live database's page size; SQLite's default when there is no database yet."""
    if not Path(database).exists():
        return sqlite3.connect(":memory:").execute("PRAGMA page_size").fetchone()[0]
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return db.execute("PRAGMA page_size").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise BackupError(f"cannot read the current database {database} ({e})") from e


def prepare(file, candidate, expected_tables, page_size, live=None):
    """Copy the backup file to candidate, check it and bring it to this app's schema;
    returns (row counts, migration steps). Raises BackupError or sqlite3.Error.

    A -wal file beside the backup holds writes that are not in the file yet (a copy of
    a live database taken with cp): it is copied too, and merged into the candidate.
    The candidate gets the live database's page size, which the backup API needs.
    live: the live database, whose migrations name tables of this app (see
    check_app_database).
    """
    from . import migrate  # migrate imports this module

    shutil.copyfile(file, candidate)
    os.chmod(candidate, 0o600)
    check_header(candidate)
    wal = Path(f"{file}-wal")
    if wal.is_file():
        shutil.copyfile(wal, f"{candidate}-wal")
    db = sqlite3.connect(str(candidate))
    try:
        db.execute("PRAGMA journal_mode = DELETE")  # merges the -wal, if any, into the file
        if db.execute("PRAGMA page_size").fetchone()[0] != page_size:
            db.execute(f"PRAGMA page_size = {int(page_size)}")
            db.execute("VACUUM")
    finally:
        db.close()
    counts = verify(candidate)
    check_app_database(candidate, set(counts), expected_tables, live)
    db = connect(str(candidate))
    try:
        try:
            steps = migrate.migrate(db, read_schema()).steps
        except migrate.MigrationRefused as e:
            raise BackupError(f"it cannot be brought to this app's schema: {'; '.join(e.problems[:5])}") from e
        # Logins are not restored: a session ended since the backup (a logout, a
        # password change) must stay ended. Everyone logs in again.
        with db:
            ended = db.execute('DELETE FROM "app_session"').rowcount
        db.execute("PRAGMA journal_mode = DELETE")
    finally:
        db.close()
    if steps or ended:
        counts = verify(candidate)  # the changed copy, checked again
    return counts, steps


def check_app_database(path, tables, expected, live=None):
    """Refuse a database that is not one of this app's (BackupError): the one check
    that restore makes before it goes on. tables: the database's tables; expected: the
    schema's; live: the live database, if any.

    Every migration marks the database as this app's (PRAGMA application_id, see
    migrate.APPLICATION_ID). A database marked by another app is refused, whatever its
    tables; one marked by this app is its own, whatever tables it holds (the tables kept
    when their entity left the spec, the founder's own tables from app/custom.py).
    An unmarked database (a backup taken before migrations marked them) is judged by its
    tables: the schema's, the old names of renamed entities (`renamed_from`, which
    restore's migration renames) and the tables that the live database's migrations
    recorded (kept ones included). Never by what the file itself records: any app's
    database records its own tables.
    """
    from . import migrate  # migrate imports this module

    found = application_id(path)
    if found == migrate.APPLICATION_ID:
        check_no_triggers_or_views(path)
        return
    if found:
        raise BackupError(
            f"it is the database of another app: its PRAGMA application_id is {found}, "
            f"this app's ({SLUG}) is {migrate.APPLICATION_ID}"
        )
    renamed = {e["renamed_from"] for e in migrate.ENTITIES.values() if e["renamed_from"]}
    ours = set(expected) | renamed | recorded_tables(live)
    try:
        check_tables(tables, ours)
    except BackupError as e:
        raise BackupError(
            f"{e}. It is not marked as this app's database (PRAGMA application_id is 0: "
            "taken before migrations marked them). If you know it is one of this app's "
            "backups, mark a copy of it as this app's (cp FILE COPY; sqlite3 COPY "
            f"'PRAGMA application_id = {migrate.APPLICATION_ID}') and restore the copy"
        ) from e
    check_no_triggers_or_views(path)


def application_id(path):
    """The PRAGMA application_id of the database at path: 0 when nothing marked it."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA application_id").fetchone()[0]
    finally:
        db.close()


def recorded_tables(path):
    """The entity tables that the migrations of the database at path recorded in its
    app_migration table: those of every spec it was migrated to, and those it kept."""
    if path is None or not Path(path).is_file():
        return set()
    # Not read-only: closing the last connection to a WAL database then also removes
    # its -wal and -shm files, as the app's own connections do; this one only reads.
    db = sqlite3.connect(str(path))
    try:
        found = db.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'app_migration'"
        ).fetchone()
        if not found:
            return set()
        names = set()
        for (entities,) in db.execute('SELECT "entities" FROM "app_migration"'):
            try:
                names |= set(json.loads(entities))
            except (TypeError, ValueError):
                continue  # not written by migrate: it names nothing
        return names
    finally:
        db.close()


def check_no_triggers_or_views(path):
    """The app's schema has no trigger and no view: a backup holding one is not its own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        extra = db.execute(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'view') ORDER BY name"
        ).fetchall()
    finally:
        db.close()
    if extra:
        raise BackupError(
            "it is not a backup of this app: it has "
            + ", ".join(f"{kind} {name}" for kind, name in extra)
        )


def check_tables(tables, expected):
    """Refuse an unmarked database that is not this app's: another vertical's, or any
    other. expected: the tables this app's databases may hold."""
    missing = REQUIRED_TABLES - tables
    if missing:
        raise BackupError(
            f"it is not a backup of this app: it has no {', '.join(sorted(missing))} table"
        )
    foreign = sorted(t for t in tables - expected if is_entity_table(t))
    if foreign:
        raise BackupError(
            f"it is not a backup of this app: unknown tables {', '.join(foreign)}"
        )
    entities = {t for t in expected if is_entity_table(t)}
    if entities and not entities & tables:
        raise BackupError(
            f"it is not a backup of this app: it has none of this app's tables "
            f"({', '.join(sorted(entities))})"
        )


# -- files ------------------------------------------------------------------------


def make_private_dir(directory):
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)


@contextlib.contextmanager
def locked(directory):
    """Hold an exclusive lock on directory/.lock: one backup or restore at a time."""
    fd = os.open(Path(directory) / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError("another backup or restore is running") from None
        for stale in Path(directory).glob(".tmp-*"):  # left behind by a killed run
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def unique_name(directory, stem):
    name, n = f"{stem}.db", 1
    while (Path(directory) / name).exists():
        name, n = f"{stem}-{n}.db", n + 1
    return name


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
