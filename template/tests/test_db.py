"""The connection's pragmas and `flask --app app migrate` creating the database."""

import os
import sqlite3
import threading

import pytest

from app import create_app
from app.db import connect, get_db

from conftest import TEST_CONFIG


def test_connection_pragmas(app):
    with app.app_context():
        db = get_db()
        assert db is get_db()  # one connection per request
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert isinstance(db.execute("SELECT 1 AS one").fetchone(), sqlite3.Row)


def test_thread_keeps_its_connection_but_no_transaction(app):
    with app.app_context():
        db = get_db()
        db.execute('INSERT INTO "account" ("name") VALUES (?)', ("never committed",))
        assert db.in_transaction
    assert not db.in_transaction  # rolled back at teardown
    with app.app_context():
        assert get_db() is db  # the thread's next request reuses it
        assert db.execute('SELECT count(*) FROM "account"').fetchone()[0] == 0

    seen = []

    def other_thread():
        with app.app_context():
            seen.append(get_db())
            seen.append(get_db().execute('SELECT count(*) FROM "account"').fetchone()[0])

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen[0] is not db and seen[1] == 0


def test_connection_closed_after_an_error(app):
    @app.get("/fails")
    def fails():
        get_db().execute('INSERT INTO "account" ("name") VALUES (?)', ("half done",))
        raise RuntimeError("boom")

    app.testing = False  # a 500 page, not the exception
    with app.app_context():
        before = get_db()
    assert app.test_client().get("/fails").status_code == 500
    with pytest.raises(sqlite3.ProgrammingError):
        before.execute("SELECT 1")  # closed: the thread opens a fresh one next time
    with app.app_context():
        assert get_db().execute('SELECT count(*) FROM "account"').fetchone()[0] == 0


def test_a_database_moved_into_place_gets_a_new_connection(app, tmp_path):
    path = app.config["DATABASE"]
    with app.app_context():
        before = get_db()
        before.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    replacement = tmp_path / "replacement.db"
    conn = connect(path)
    conn.execute("VACUUM INTO ?", (str(replacement),))
    conn.close()
    conn = connect(replacement)
    conn.execute('INSERT INTO "account" ("name") VALUES (?)', ("only in the replacement",))
    conn.commit()
    conn.close()
    os.replace(replacement, path)
    with app.app_context():
        assert get_db() is not before
        assert get_db().execute('SELECT "name" FROM "account"').fetchall()[0][0] == "only in the replacement"


def test_migrate_creates_then_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    app = create_app({**TEST_CONFIG, "DATA_DIR": str(tmp_path)})
    first = app.test_cli_runner().invoke(args=["migrate"])
    assert first.exit_code == 0
    assert 'created table "account"' in first.output
    assert 'created table "user"' in first.output
    assert 'created table "login_attempt"' in first.output
    assert first.output.rstrip().endswith("changes).")
    second = app.test_cli_runner().invoke(args=["migrate"])
    assert second.exit_code == 0
    assert second.output == f"{app.config['DATABASE']}: up to date, nothing to do.\n"


def test_migrate_adds_what_is_missing(app, runner):
    conn = connect(app.config["DATABASE"])
    conn.execute('DROP INDEX "login_attempt_address"')
    conn.close()
    result = runner.invoke(args=["migrate"])
    assert result.output.splitlines()[0] == 'created index "login_attempt_address"'


# Changing existing tables (renames, rebuilds, refusals): see test_migrate.py.
