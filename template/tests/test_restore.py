"""Backups of a database that earlier migrations changed can be restored (app/backup.py).

An entity removed from the spec leaves its table behind, kept with its data; an entity
renamed leaves its old name in the backups taken before the rename. Such backups are
this app's own: `backup` calls them verified, so `restore` must take them.

As in test_migrate.py, the tests add an entity of their own by hand ("note_kept"...),
so that they hold whatever the spec's entities are.
"""

import json
import sqlite3
from pathlib import Path

import pytest

from app import SLUG, backup, migrate
from app.db import connect, read_schema

from test_migrate import NOTE, application_id, entities, note_schema


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


def test_a_backup_from_before_an_entity_was_added_then_renamed_restores(app, tmp_path, monkeypatch):
    """The backup holds a kept table, and predates "note_shelf", since renamed "note_rack"
    (renamed_from "note_shelf"): it has neither name because it is older than the entity,
    which its migration creates empty."""
    path = with_notes(app, "note_kept")
    backups = tmp_path / "backups"
    migrate.run(path, backups)  # the spec without the note: its table is kept
    record = backup.run_backup(path, backups)
    assert record["verified"], record["error"]

    title = {"title": ("string", None, None)}
    for table, old in (("note_shelf", None), ("note_rack", "note_shelf")):  # added, migrated, renamed
        schema = note_schema(['"title" TEXT'], table=table)
        monkeypatch.setattr(migrate, "ENTITIES", entities(title, table, old))
        monkeypatch.setattr(migrate, "read_schema", lambda schema=schema: schema)
        monkeypatch.setattr(backup, "read_schema", lambda schema=schema: schema)
        assert migrate.run(path, backups).steps

    done = backup.restore(path, record["file"], backups, backup.schema_tables())
    assert 'created table "note_rack"' in done["migrated"]
    assert notes(path, "note_kept") == [(1, "one"), (2, "two")]
    assert notes(path, "note_rack") == []


def test_a_founder_table_is_backed_up_and_restored(app, tmp_path):
    """A table of the founder's own (made by app/custom.py), which migrate only keeps, is
    in this app's database: backed up without a question, and restored."""
    path = app.config["DATABASE"]
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE "founder_notes" ("id" INTEGER PRIMARY KEY, "body" TEXT);
                        INSERT INTO "founder_notes" ("body") VALUES ('call the cheese shop');""")
    db.close()
    backups = tmp_path / "backups"
    record = backup.run_backup(path, backups)
    assert record["verified"] and record["warning"] is None, record
    assert Path(record["file"]).is_file()
    db = sqlite3.connect(path)
    db.execute('DELETE FROM "founder_notes"')
    db.commit()
    db.close()
    done = backup.restore(path, record["file"], backups, backup.schema_tables())
    assert done["tables"]["founder_notes"] == 1


def test_backup_never_refuses_live_data_restore_would_question(app, runner, tmp_path):
    """An unmarked database with a table nothing vouches for: restore would refuse it, the
    backup is taken all the same, verified, with a warning (printed, and in last.json)."""
    path = app.config["DATABASE"]
    db = sqlite3.connect(path)
    db.execute('CREATE TABLE "stranger" ("id" INTEGER PRIMARY KEY)')  # no migration made it
    db.execute("PRAGMA application_id = 0")  # not marked as this app's
    db.commit()
    db.close()
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    backups = Path(app.config["DATA_DIR"]) / "backups"
    last = json.loads((backups / "last.json").read_text())
    assert last["verified"] and last["error"] is None and Path(last["file"]).is_file()
    assert last["warning"].startswith("restore would refuse this backup as it is: it is not a backup of "
                                      "this app: unknown tables stranger.")
    assert "`flask --app app migrate` marks the live database as this app's" in last["warning"]
    assert f"Warning: {last['warning']}" in result.output
    with pytest.raises(backup.BackupError, match="unknown tables stranger"):
        backup.restore(path, last["file"], backups, backup.schema_tables())

    runner.invoke(args=["migrate"])  # marks it: the next backup is restorable as it is
    record = backup.run_backup(path, backups)
    assert record["verified"] and record["warning"] is None, record


def set_application_id(path, number):
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA application_id = {int(number)}")
    db.close()


def other_app(tmp_path, extra_table=None):
    """Another app's database holding every table of this one (and extra_table, which its
    own migrations recorded), with an account and a user; its path."""
    other = tmp_path / "other.db"
    conn = connect(str(other))
    schema, fields = read_schema(), dict(migrate.ENTITIES)
    if extra_table:
        schema += NOTE.format(table=extra_table, columns='"title" TEXT')
        fields[extra_table] = entities({"title": ("string", None, None)})["app_note"]
    migrate.migrate(conn, schema, fields)
    conn.execute("INSERT INTO account (name) VALUES ('Their customer')")
    conn.execute("""INSERT INTO "user" ("account_id", "email", "password_hash") VALUES (1, 'them@example.com', 'x')""")
    conn.commit()
    conn.close()
    return other


def users(path):
    db = sqlite3.connect(path)
    try:
        return db.execute('SELECT "email" FROM "user" ORDER BY "id"').fetchall()
    finally:
        db.close()


def test_a_database_marked_by_another_app_is_refused_whatever_its_tables(app, auth, tmp_path):
    """Two verticals may share every table name; the mark in the file's header tells them apart."""
    auth.signup()
    path = app.config["DATABASE"]
    assert application_id(path) == migrate.APPLICATION_ID  # migrate marked it
    other = other_app(tmp_path)
    set_application_id(other, migrate.APPLICATION_ID + 1)
    before = users(path)
    with pytest.raises(backup.BackupError) as refused:
        backup.restore(path, other, tmp_path / "backups", backup.schema_tables())
    assert (f"it is the database of another app: its PRAGMA application_id is {migrate.APPLICATION_ID + 1}, "
            f"this app's ({SLUG}) is {migrate.APPLICATION_ID}; nothing was changed") in str(refused.value)
    assert users(path) == before == [("owner@example.com",)]


def test_an_unmarked_database_is_not_trusted_for_the_tables_it_records(app, tmp_path):
    """A backup from before databases were marked: the tables its own app_migration
    records say nothing (any app's database records its own tables); only the live
    database's records, the schema and the renamed_from names do."""
    other = other_app(tmp_path, extra_table="their_note")
    set_application_id(other, 0)
    with pytest.raises(backup.BackupError) as refused:
        backup.restore(app.config["DATABASE"], other, tmp_path / "backups", backup.schema_tables())
    message = str(refused.value)
    assert "it is not a backup of this app: unknown tables their_note. It is not marked as this app's" in message
    assert f"'PRAGMA application_id = {migrate.APPLICATION_ID}') and restore the copy" in message
    assert users(app.config["DATABASE"]) == []


def test_an_unmarked_backup_with_a_kept_table_restores_where_the_live_database_kept_it(app, tmp_path):
    """On this box the live database's migrations recorded the kept table; on a fresh box
    nothing vouches for it, and the refusal says how to mark the file as this app's."""
    path = with_notes(app, "note_kept")
    backups = tmp_path / "backups"
    migrate.run(path, backups)  # the spec without the note: its table is kept
    record = backup.run_backup(path, backups)
    assert record["verified"], record["error"]
    old = tmp_path / "old.db"  # as backups were before migrate marked databases
    old.write_bytes(Path(record["file"]).read_bytes())
    set_application_id(old, 0)

    done = backup.restore(path, old, backups, backup.schema_tables())
    assert done["tables"]["note_kept"] == 2
    assert application_id(path) == migrate.APPLICATION_ID  # restore's migration marked it

    fresh = tmp_path / "fresh" / "app.db"  # a new box: no live database yet
    fresh.parent.mkdir()
    with pytest.raises(backup.BackupError, match="unknown tables note_kept. It is not marked as this app's"):
        backup.restore(fresh, old, tmp_path / "fresh" / "backups", backup.schema_tables())
    set_application_id(old, migrate.APPLICATION_ID)  # as the message says
    done = backup.restore(fresh, old, tmp_path / "fresh" / "backups", backup.schema_tables())
    assert notes(fresh, "note_kept") == [(1, "one"), (2, "two")]


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


def test_restore_keeps_the_sessions_of_a_moved_database_when_asked(app, client, auth, tmp_path):
    """vgen move carries the very database to another server: its logins stay valid."""
    auth.signup()
    name = app.config["SESSION_COOKIE_NAME"]
    cookie = client.get_cookie(name).value
    path = app.config["DATABASE"]
    backups = tmp_path / "backups"
    record = backup.run_backup(path, backups)
    assert record["verified"], record["error"]
    done = backup.restore(path, record["file"], backups, backup.schema_tables(), keep_sessions=True)
    assert done["tables"] == record["tables"] and done["tables"]["app_session"] == 1
    copy = app.test_client()
    copy.set_cookie(name, cookie)
    assert copy.get("/account/password").status_code == 200


def test_counts_read_as_english():
    assert backup.rows_in({"account": 1}) == "1 row in 1 table"
    assert backup.rows_in({"account": 2, "user": 0}) == "2 rows in 2 tables"
