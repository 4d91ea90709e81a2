"""The database: one SQLite file in DATA_DIR, reached through get_db().

The schema is two plain SQL files: schema_auth.sql (the app's own tables: accounts,
users, login attempts) and schema.sql (one table per entity, generated from the spec).
`flask --app app migrate` creates the database from them, or brings an existing one to
them (app/migrate.py: renames, new columns, conversions, one transaction).
"""

import os
import shutil
import sqlite3
import threading

import click
from flask import current_app, g
from flask.cli import with_appcontext

SCHEMA_FILES = ("schema_auth.sql", "schema.sql")

# What a customer reads when the server cannot write its data (a full disk, a file
# made read-only): their entry is shown again below it.
NOT_WRITTEN = (
    "We could not save this: the server cannot store data right now. "
    "Your entry is below: try again in a few minutes."
)


def write_failed(error, what):
    """Log one line saying what could not be written and why; the customer's message.

    SQLite rolls the write back whole, and the app recovers by itself once the disk
    has space again (or the file is writable): nothing to restart.
    """
    current_app.logger.error("%s not saved: the database could not be written: %s", what, error)
    return NOT_WRITTEN


def write_problem(db, data_dir, min_free_bytes):
    """Why the app cannot write now ("disk full: ...", "database not writable: ..."),
    or None. Cheap enough for every health check: a statvfs, and the write lock taken
    and released at once (refused on a read-only database)."""
    free = shutil.disk_usage(data_dir).free
    if free < min_free_bytes:
        return f"disk full: {free} bytes free in {data_dir}"
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        return f"database not writable: {e}"
    return None


def connect(path):
    """Open a connection with the pragmas every connection needs (web and CLI alike)."""
    # Each prepared statement kept for reuse holds a few KB in SQLite, per connection:
    # the default of 128 kept every statement of a large vertical, some 0.5 MB per
    # thread. 32 keeps those of the pages in use, and preparing one takes ~30 µs.
    conn = sqlite3.connect(path, cached_statements=32)
    conn.row_factory = sqlite3.Row
    # busy_timeout first: switching to WAL may have to wait for another connection.
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def get_db():
    """The connection for this request: the thread's own, opened on its first request.

    Opening a SQLite connection is cheap, but its first statement reads and parses the
    whole schema (about half a millisecond here, more than a page takes to render). So
    each server thread keeps its connection open from one request to the next; close_db
    makes sure no transaction outlives its request.
    """
    if "db" not in g:
        path = current_app.config["DATABASE"]
        file = _file(path)
        if file is None or getattr(_thread, "file", None) != file:
            if getattr(_thread, "conn", None) is not None:
                _thread.conn.close()
            _thread.conn = connect(path)
            _thread.file = _file(path)
        g.db = _thread.conn
    return g.db


# One connection per thread. It also keeps the WAL file in place between requests:
# when the last connection to a WAL database closes, SQLite checkpoints the log, syncs
# the database and deletes the log, a disk sync on every request of a quiet app.
_thread = threading.local()


def _file(path):
    """The file `path` names now, or None. A thread that finds another file there (the
    tests' next app, a database moved into place) opens a new connection: one still on
    the old file would write where no one reads."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return path, st.st_dev, st.st_ino


def close_db(e=None):
    """End the request's use of the connection: roll back whatever it left uncommitted.

    After an unhandled error the connection is closed instead: a cursor kept alive by
    the error's traceback could otherwise hold an old snapshot for the next request.
    """
    db = g.pop("db", None)
    if db is None:
        return
    if e is not None:
        db.close()
        _thread.conn = _thread.file = None
    elif db.in_transaction:
        db.rollback()


def read_schema():
    """The schema's SQL, in the order it must run."""
    here = os.path.dirname(__file__)
    parts = []
    for name in SCHEMA_FILES:
        with open(os.path.join(here, name), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


@click.command("migrate")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option(
    "--drop-removed",
    is_flag=True,
    help="Drop the tables and columns the spec no longer has, and their data.",
)
@with_appcontext
def migrate_command(dry_run, drop_removed):
    """Create the database, or bring it to the schema; see app/migrate.py."""
    from . import backup, migrate  # imported here: both import this module

    path = current_app.config["DATABASE"]
    backups = os.path.join(current_app.config["DATA_DIR"], "backups")
    try:
        result = migrate.run(path, backups, drop_removed=drop_removed, dry_run=dry_run)
    except migrate.MigrationRefused as e:
        raise click.ClickException(str(e)) from None
    except backup.BackupError as e:
        raise click.ClickException(
            f"no backup could be taken before migrating ({e}); nothing was changed"
        ) from None
    for line in result.steps + result.kept:
        click.echo(line)
    if result.backup:
        click.echo(f"Backup taken before migrating: {result.backup}")
    changes = f"{len(result.steps)} change{'' if len(result.steps) == 1 else 's'}"
    if not result.steps:
        click.echo(f"{path}: up to date, nothing to do.")
    elif dry_run:
        click.echo(f"{path}: dry run, nothing written ({changes} planned).")
    else:
        click.echo(f"{path}: migrated ({changes}).")


def init_app(app):
    app.teardown_appcontext(close_db)
    app.cli.add_command(migrate_command)
