"""Backups of a database that earlier migrations changed can be restored (app/backup.py).

An entity removed from the spec leaves its table behind, kept with its data; an entity
renamed leaves its old name in the backups taken before the rename. Such backups are
this app's own: `backup` calls them verified, so `restore` must take them.

As in test_migrate.py, the tests add an entity of their own by hand ("note_kept"...),
so that they hold whatever the spec's entities are.
"""

import sqlite3
from pathlib import Path

import pytest

from app import backup, migrate
from app.db import connect, read_schema

from test_migrate import NOTE, entities, note_schema


def notes(path, table):
    db = sqlite3.connect(path)
    try:
        return db.execute(f'SELECT "id", "title" FROM "{table}" ORDER BY "id"').fetchall()
    finally:
        db.close()


def with_notes(app, table):
    """The app's database migrated with a "table" entity holding two rows; its path."""
    path = app.config["DATABASE"]
    conn = connect(path)
    migrate.migrate(conn, note_schema(['"title" TEXT'], table=table),
                    entities({"title": ("string", None, None)}, table))
    conn.execute("INSERT INTO account (name) VALUES ('Acme')")
    conn.executemany(f'INSERT INTO "{table}" ("account_id", "title") VALUES (1, ?)', [("one",), ("two",)])
    conn.commit()
    conn.close()
    return path


def test_backups_after_an_entity_left_the_spec_restore(app, tmp_path):
    path = with_notes(app, "note_kept")
    backups = tmp_path / "backups"
    result = migrate.run(path, backups)  # the spec without the note: its table is kept
    assert result.kept[0].startswith('table "note_kept" (2 rows) is no longer in the spec')

    record = backup.run_backup(path, backups)
    assert record["verified"], record["error"]
    conn = connect(path)
    conn.execute('DELETE FROM "note_kept"')
    conn.commit()
    conn.close()
    done = backup.restore(path, record["file"], backups, backup.schema_tables())
    assert done["tables"]["note_kept"] == 2
    assert notes(path, "note_kept") == [(1, "one"), (2, "two")]


def test_a_backup_from_before_an_entity_rename_restores_under_the_new_name(app, tmp_path, monkeypatch):
    path = with_notes(app, "note_old")
    backups = tmp_path / "backups"
    schema = note_schema(['"title" TEXT'], table="note_new")
    monkeypatch.setattr(migrate, "ENTITIES", entities({"title": ("string", None, None)}, "note_new", "note_old"))
    monkeypatch.setattr(migrate, "read_schema", lambda: schema)
    monkeypatch.setattr(backup, "read_schema", lambda: schema)
    result = migrate.run(path, backups)
    assert result.steps[0] == 'renamed table "note_old" to "note_new"'

    done = backup.restore(path, result.backup, backups, backup.schema_tables())  # holds "note_old"
    assert 'renamed table "note_old" to "note_new"' in done["migrated"]
    assert notes(path, "note_new") == [(1, "one"), (2, "two")]
    assert backup.run_backup(path, backups)["verified"]


def test_backup_is_not_verified_when_restore_would_refuse_it(app, tmp_path):
    path = app.config["DATABASE"]
    db = sqlite3.connect(path)
    db.execute('CREATE TABLE "stranger" ("id" INTEGER PRIMARY KEY)')  # no migration made it
    db.commit()
    db.close()
    backups = tmp_path / "backups"
    record = backup.run_backup(path, backups)
    assert not record["verified"]
    assert "restore would refuse the copy" in record["error"]
    assert "unknown tables stranger" in record["error"]
    assert [p.name for p in backups.iterdir() if p.suffix == ".db"] == []  # no file named like a backup
    with pytest.raises(backup.BackupError, match="unknown tables stranger"):
        backup.restore(path, path, backups, backup.schema_tables())


def test_another_apps_database_is_still_refused(app, tmp_path):
    """Its app_migration names its own tables: not enough without one of this app's."""
    other = tmp_path / "other.db"
    auth = (Path(app.root_path) / "schema_auth.sql").read_text()
    conn = connect(str(other))
    migrate.migrate(conn, auth + NOTE.format(table="their_note", columns='"title" TEXT'),
                    {"their_note": entities({"title": ("string", None, None)})["app_note"]})
    conn.close()
    with pytest.raises(backup.BackupError, match="none of this app's tables"):
        backup.restore(app.config["DATABASE"], other, tmp_path / "backups", backup.schema_tables())


def test_restore_ends_every_session(app, client, auth, tmp_path):
    """A session ended since the backup (a logout) must not come back with it."""
    auth.signup()
    name = app.config["SESSION_COOKIE_NAME"]
    cookie = client.get_cookie(name).value
    path = app.config["DATABASE"]
    backups = tmp_path / "backups"
    record = backup.run_backup(path, backups)
    assert record["verified"], record["error"]
    auth.logout()
    done = backup.restore(path, record["file"], backups, backup.schema_tables())
    assert done["tables"]["app_session"] == 0
    copy = app.test_client()
    copy.set_cookie(name, cookie)
    assert copy.get("/account/password").status_code == 302


def test_counts_read_as_english():
    assert backup.rows_in({"account": 1}) == "1 row in 1 table"
    assert backup.rows_in({"account": 2, "user": 0}) == "2 rows in 2 tables"
