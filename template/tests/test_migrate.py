"""`flask --app app migrate` on an existing database: app/migrate.py.

These tests change the schema by hand, on an extra "app_note" table, so that they hold
whatever the spec's entities are.
"""

import hashlib
import json
import sqlite3

import pytest

from app import SLUG, migrate
from app.db import connect, read_schema

NOTE = """
CREATE TABLE IF NOT EXISTS "{table}" (
  "id" INTEGER PRIMARY KEY,
  "account_id" INTEGER NOT NULL REFERENCES "account"("id") ON DELETE CASCADE,
  {columns}
) STRICT;
CREATE INDEX IF NOT EXISTS "{table}(account_id)" ON "{table}" ("account_id");
"""


def note_schema(columns, table="app_note"):
    return read_schema() + NOTE.format(table=table, columns=",\n  ".join(columns))


def entities(fields, name="app_note", renamed_from=None):
    """ENTITIES plus the "app_note" entity: {field: (type, places, renamed_from)}."""
    note = {
        "renamed_from": renamed_from,
        "fields": {f: {"type": t, "places": p, "renamed_from": r} for f, (t, p, r) in fields.items()},
    }
    return {**migrate.ENTITIES, name: note}


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def db(app):
    """The app's migrated database with an "app_note" table holding three rows."""
    conn = connect(app.config["DATABASE"])
    migrate.migrate(conn, note_schema(['"amount" INTEGER', '"title" TEXT']),
                    entities({"amount": ("integer", None, None), "title": ("string", None, None)}))
    conn.execute("INSERT INTO account (name) VALUES ('Acme')")
    conn.executemany(
        'INSERT INTO "app_note" ("account_id", "amount", "title") VALUES (1, ?, ?)',
        [(12, "one"), (None, "two"), (7, "two")],
    )
    conn.commit()
    yield conn
    conn.close()


def notes(conn, columns):
    return [tuple(r) for r in conn.execute(f'SELECT {columns} FROM "app_note" ORDER BY "id"')]


def test_up_to_date_is_a_no_op(app, runner):
    path = app.config["DATABASE"]
    before = file_hash(path)
    result = runner.invoke(args=["migrate"])
    assert result.exit_code == 0
    assert result.output == f"{path}: up to date, nothing to do.\n"
    assert file_hash(path) == before


def test_dry_run_writes_nothing(app, db, monkeypatch):
    path = app.config["DATABASE"]
    db.close()
    before = file_hash(path)
    monkeypatch.setattr(migrate, "read_schema", lambda: note_schema(
        ['"amount" INTEGER', '"title" TEXT', '"done" INTEGER NOT NULL DEFAULT 0']
    ) + 'CREATE TABLE "extra" ("id" INTEGER PRIMARY KEY);')
    result = migrate.run(path, app.config["DATA_DIR"] + "/backups", dry_run=True)
    assert 'created table "extra"' in result.steps
    assert 'rebuilt table "app_note" (3 rows): added "done"' in result.steps
    assert file_hash(path) == before
    conn = connect(path)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    conn.close()


def test_dry_run_command_on_an_up_to_date_database(app, runner):
    result = runner.invoke(args=["migrate", "--dry-run"])
    assert result.exit_code == 0
    assert result.output.endswith("up to date, nothing to do.\n")


def test_a_new_column_keeps_every_row_and_is_recorded(db):
    result = migrate.migrate(
        db, note_schema(['"amount" INTEGER', '"title" TEXT', '"done" INTEGER NOT NULL DEFAULT 0']),
        entities({"amount": ("integer", None, None), "title": ("string", None, None),
                  "done": ("boolean", None, None)}),
    )
    assert result.steps == ['rebuilt table "app_note" (3 rows): added "done"']
    assert notes(db, '"id", "amount", "title", "done"') == [(1, 12, "one", 0), (2, None, "two", 0), (3, 7, "two", 0)]
    summary = db.execute('SELECT "summary" FROM "app_migration" ORDER BY "id" DESC').fetchone()[0]
    assert summary == result.steps[0]
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # on again afterwards


def test_integer_to_decimal_and_a_field_rename(db):
    result = migrate.migrate(
        db, note_schema(['"price" INTEGER', '"title" TEXT']),
        entities({"price": ("decimal", 2, "amount"), "title": ("string", None, None)}),
    )
    assert result.steps[0] == 'renamed column "app_note"."amount" to "price"'
    assert notes(db, '"price"') == [(1200,), (None,), (700,)]


def test_an_entity_rename_keeps_rows_and_renames_indexes(db):
    schema = note_schema(['"amount" INTEGER', '"title" TEXT'], table="app_memo")
    result = migrate.migrate(
        db, schema,
        entities({"amount": ("integer", None, None), "title": ("string", None, None)}, "app_memo", "app_note"),
    )
    assert result.steps[0] == 'renamed table "app_note" to "app_memo"'
    assert 'created index "app_memo(account_id)"' in result.steps
    assert db.execute('SELECT count(*) FROM "app_memo"').fetchone()[0] == 3


def test_a_removed_column_is_kept_until_drop_removed(db):
    schema = note_schema(['"title" TEXT'])
    fields = entities({"title": ("string", None, None)})
    result = migrate.migrate(db, schema, fields)
    assert result.kept == ['column "app_note"."amount" is no longer in the spec; its data is kept (--drop-removed drops it)']
    assert notes(db, '"amount"') == [(12,), (None,), (7,)]
    db.execute('INSERT INTO "app_note" ("account_id", "title") VALUES (1, \'new\')')  # the app's insert
    assert migrate.migrate(db, schema, fields).steps == []  # kept: nothing more to do
    result = migrate.migrate(db, schema, fields, drop_removed=True)
    assert result.steps == ['rebuilt table "app_note" (4 rows): dropped "amount" and its data']
    assert "amount" not in [r[1] for r in db.execute('PRAGMA table_info("app_note")')]


def test_a_field_brought_back_is_converted_from_what_its_kept_column_holds(db):
    """Remove "amount" (kept), then add a field of that name back as a decimal: the
    stored 12 is the integer 12, so it becomes 1200 at 2 places, not 0.12."""
    migrate.migrate(db, note_schema(['"title" TEXT', '"done" INTEGER NOT NULL DEFAULT 0']),
                    entities({"title": ("string", None, None), "done": ("boolean", None, None)}))
    result = migrate.migrate(
        db, note_schema(['"title" TEXT', '"done" INTEGER NOT NULL DEFAULT 0', '"amount" INTEGER']),
        entities({"title": ("string", None, None), "done": ("boolean", None, None), "amount": ("decimal", 2, None)}),
    )
    assert "converted \"amount\" from integer to decimal (2 places)" in result.steps[-1]
    assert notes(db, '"amount"') == [(1200,), (None,), (700,)]


@pytest.mark.parametrize(
    "columns, fields, message",
    [
        (['"amount" INTEGER NOT NULL', '"title" TEXT'], {}, '"app_note" id 2: NOT NULL constraint failed: app_note.amount'),
        (['"amount" INTEGER', '"title" TEXT', 'UNIQUE ("account_id", "title")'], {},
         '"app_note" id 3: UNIQUE constraint failed: app_note.account_id, app_note.title'),
        (['"amount" INTEGER', '"title" TEXT CHECK ("title" IN (\'one\'))'], {}, '"app_note" id 2: CHECK constraint failed'),
        (['"amount" INTEGER', '"title" INTEGER'], {"title": ("integer", None, None)},
         "\"app_note\" id 1: \"title\" = 'one' is not a whole number"),
    ],
)
def test_impossible_migrations_change_nothing(app, db, columns, fields, message):
    path = app.config["DATABASE"]
    db.close()
    before = file_hash(path)
    conn = connect(path)
    with pytest.raises(migrate.MigrationRefused) as refused:
        migrate.migrate(conn, note_schema(columns), entities(
            {"amount": ("integer", None, None), "title": ("string", None, None), **fields}))
    assert message in str(refused.value)
    conn.close()
    assert file_hash(path) == before


def application_id(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA application_id").fetchone()[0]
    finally:
        conn.close()


def test_migrate_marks_the_database_as_this_apps_unless_it_rolls_back(app, db):
    """PRAGMA application_id, set inside the migration's transaction: committed with it,
    even as its only change; rolled back with it (a dry run, a refusal)."""
    path = app.config["DATABASE"]
    assert application_id(path) == migrate.APPLICATION_ID != 0  # the app fixture's migrate
    db.execute("PRAGMA application_id = 0")  # as every database was before
    db.close()
    before = file_hash(path)
    marked = f"marked the database as the {SLUG} app's (PRAGMA application_id = {migrate.APPLICATION_ID})"
    schema = note_schema(['"amount" INTEGER', '"title" TEXT'])
    fields = entities({"amount": ("integer", None, None), "title": ("string", None, None)})

    conn = connect(path)
    assert migrate.migrate(conn, schema, fields, dry_run=True).steps == [marked]
    conn.close()
    assert file_hash(path) == before
    refused(app, note_schema(['"amount" INTEGER NOT NULL', '"title" TEXT']), fields)
    assert application_id(path) == 0

    conn = connect(path)
    assert migrate.migrate(conn, schema, fields).steps == [marked]
    assert application_id(path) == migrate.APPLICATION_ID
    assert conn.execute('SELECT "summary" FROM "app_migration" ORDER BY "id" DESC').fetchone()[0] == marked
    assert migrate.migrate(conn, schema, fields).steps == []
    conn.execute("PRAGMA application_id = 7")  # another app's database: left alone
    with pytest.raises(migrate.MigrationRefused, match="This is the database of another app"):
        migrate.migrate(conn, schema, fields)
    conn.close()
    assert application_id(path) == 7


def test_a_backup_is_taken_before_existing_data_changes(app, db, monkeypatch):
    db.close()
    monkeypatch.setattr(migrate, "read_schema", lambda: note_schema(['"title" TEXT']))
    result = migrate.run(app.config["DATABASE"], app.config["DATA_DIR"] + "/backups")
    copy = sqlite3.connect(result.backup)
    assert copy.execute('SELECT "amount" FROM "app_note" ORDER BY "id"').fetchall() == [(12,), (None,), (7,)]
    copy.close()


def bare_table(name, columns=""):
    """An entity table with only the columns every entity has, plus `columns`."""
    return f"""
CREATE TABLE IF NOT EXISTS "{name}" (
  "id" INTEGER PRIMARY KEY,
  "account_id" INTEGER NOT NULL REFERENCES "account"("id") ON DELETE CASCADE{columns}
) STRICT;
"""


YARD = bare_table("note_yard")
HIVE = bare_table("note_hive", """,
  "yard" INTEGER REFERENCES "note_yard"("id") ON DELETE {on_delete},
  "name" TEXT NOT NULL,
  UNIQUE ("account_id", "name")""") + """CREATE INDEX IF NOT EXISTS "note_hive(yard)" ON "note_hive" ("yard");
"""


@pytest.mark.parametrize("on_delete", ["CASCADE", "NO ACTION", "SET NULL"])
def test_a_kept_table_no_longer_follows_the_live_records(app, on_delete):
    """Remove the note_hive entity: its table is kept, and deleting a yard it refers to
    neither deletes the hives, nor empties their yard, nor is refused because of them."""
    conn = connect(app.config["DATABASE"])
    yard = {"renamed_from": None, "fields": {}}
    hive = {"renamed_from": None, "fields": {
        "yard": {"type": "ref", "places": None, "to": "note_yard", "renamed_from": None},
        "name": {"type": "string", "places": None, "to": None, "renamed_from": None}}}
    migrate.migrate(conn, read_schema() + YARD + HIVE.format(on_delete=on_delete),
                    {**migrate.ENTITIES, "note_yard": yard, "note_hive": hive})
    conn.execute("INSERT INTO account (name) VALUES ('Acme')")
    conn.executemany('INSERT INTO "note_yard" ("account_id") VALUES (1)', [(), ()])
    conn.executemany('INSERT INTO "note_hive" ("account_id", "yard", "name") VALUES (1, ?, ?)', [(1, "h1"), (2, "h2")])
    conn.commit()
    before = conn.execute('SELECT * FROM "note_hive" ORDER BY "id"').fetchall()

    result = migrate.migrate(conn, read_schema() + YARD,
                             {**migrate.ENTITIES, "note_yard": yard})
    assert 'rebuilt kept table "note_hive" (2 rows) without its references to "note_yard": changes there no longer touch its rows' in result.steps
    assert result.touches_data
    assert conn.execute('SELECT * FROM "note_hive" ORDER BY "id"').fetchall() == before
    assert [r[2] for r in conn.execute('PRAGMA foreign_key_list("note_hive")')] == ["account"]
    indexes = {r[1] for r in conn.execute('PRAGMA index_list("note_hive")')}
    assert "note_hive(yard)" in indexes
    conn.execute('DELETE FROM "note_yard" WHERE "id" = 1')  # foreign keys are on, as in the app
    conn.commit()
    assert conn.execute('SELECT * FROM "note_hive" ORDER BY "id"').fetchall() == before
    assert migrate.migrate(conn, read_schema() + YARD,
                           {**migrate.ENTITIES, "note_yard": yard}).steps == []  # done once
    conn.execute('DELETE FROM "account"')  # deleting an account still deletes its kept rows
    assert conn.execute('SELECT count(*) FROM "note_hive"').fetchone()[0] == 0
    conn.close()


def yard_barn_hive(ref):
    """note_yard, note_barn and note_hive, whose "yard" column is `ref`: (schema, ENTITIES)."""
    schema = read_schema() + YARD + bare_table("note_barn") + bare_table(
        "note_hive", ',\n  "yard" INTEGER' + (f' REFERENCES "{ref}"("id") ON DELETE CASCADE' if ref else ""))
    field = {"type": "ref", "places": None, "to": ref, "renamed_from": None} if ref else \
        {"type": "integer", "places": None, "to": None, "renamed_from": None}
    plain = {"renamed_from": None, "fields": {}}
    return schema, {**migrate.ENTITIES, "note_yard": plain, "note_barn": plain,
                    "note_hive": {"renamed_from": None, "fields": {"yard": field}}}


@pytest.fixture
def yards(app):
    """Acme (account 1): yards 1-2, hives 1-2 in them, hive 3 in none; Evil (account 2): barns 1-3."""
    conn = connect(app.config["DATABASE"])
    migrate.migrate(conn, *yard_barn_hive("note_yard"))
    conn.execute("INSERT INTO account (name) VALUES ('Acme'), ('Evil')")
    conn.executemany('INSERT INTO "note_yard" ("account_id") VALUES (1)', [(), ()])
    conn.executemany('INSERT INTO "note_barn" ("account_id") VALUES (2)', [(), (), ()])
    conn.executemany('INSERT INTO "note_hive" ("account_id", "yard") VALUES (1, ?)', [(1,), (2,), (None,)])
    conn.commit()
    yield conn
    conn.close()


def test_a_ref_given_another_target_is_refused_with_its_rows(app, yards):
    path = app.config["DATABASE"]
    yards.close()
    before = file_hash(path)
    conn = connect(path)
    with pytest.raises(migrate.MigrationRefused) as refused:
        migrate.migrate(conn, *yard_barn_hive("note_barn"))
    conn.close()
    assert refused.value.problems[:3] == [
        '"note_hive"."yard" now refers to "note_barn" instead of "note_yard": its 2 values are ids of '
        '"note_yard" rows and would point at unrelated "note_barn" rows. Keep to = "note_yard", or give '
        'the new ref field another name (the old column is then kept with its data), or empty "yard" in '
        "these rows first:",
        '"note_hive" id 1: "yard" = 1 is the id of a "note_yard" row, not of a "note_barn" row',
        '"note_hive" id 2: "yard" = 2 is the id of a "note_yard" row, not of a "note_barn" row',
    ]
    assert file_hash(path) == before


def test_a_ref_given_another_target_with_no_values_is_converted(yards):
    yards.execute('UPDATE "note_hive" SET "yard" = NULL')
    yards.commit()
    result = migrate.migrate(yards, *yard_barn_hive("note_barn"))
    assert result.steps == ['rebuilt table "note_hive" (3 rows): converted "yard" from ref to "note_yard" to ref to "note_barn"']
    assert [r[2] for r in yards.execute('PRAGMA foreign_key_list("note_hive")')] == ["note_barn", "account"]


def test_a_ref_to_a_row_of_another_account_is_refused(app, yards):
    """An integer column made a ref: its values must be ids of the same account's rows."""
    migrate.migrate(yards, *yard_barn_hive(None))  # "yard" is a plain integer now
    yards.execute('UPDATE "note_hive" SET "yard" = 3 WHERE "id" = 2')  # no yard 3: a barn of Evil's
    yards.commit()
    with pytest.raises(migrate.MigrationRefused) as refused:
        migrate.migrate(yards, *yard_barn_hive("note_barn"))
    assert refused.value.problems == [
        '"note_hive" id 1: "yard" = 1 refers to a "note_barn" row of another account (account 2; this row\'s is 1)',
        '"note_hive" id 2: "yard" = 3 refers to a "note_barn" row of another account (account 2; this row\'s is 1)',
    ]
    assert [tuple(r) for r in yards.execute('SELECT "yard" FROM "note_hive" ORDER BY "id"')] == [(1,), (3,), (None,)]


def refused(app, schema, fields, **options):
    """The MigrationRefused of migrating to schema; asserts the database file is unchanged."""
    path = app.config["DATABASE"]
    before = file_hash(path)
    conn = connect(path)
    try:
        with pytest.raises(migrate.MigrationRefused) as refusal:
            migrate.migrate(conn, schema, fields, **options)
    finally:
        conn.close()
    assert file_hash(path) == before
    return str(refusal.value)


def test_a_rename_onto_a_kept_column_is_refused_until_it_is_dropped(app, db):
    """"amount" removed (kept), then "title" renamed to "amount": the app must not show
    the old amounts, nor hide the titles in a column that --drop-removed deletes."""
    migrate.migrate(db, note_schema(['"title" TEXT']), entities({"title": ("string", None, None)}))
    db.close()
    schema = note_schema(['"amount" TEXT'])
    fields = entities({"amount": ("string", None, "title")})
    message = refused(app, schema, fields)
    assert "A rename (renamed_from) cannot be done as the spec says:" in message
    assert ('"app_note"."title" cannot be renamed to "amount" (renamed_from): the table already has a column '
            '"amount" that the spec no longer has, kept with its data. Drop it and its data with '
            "`flask --app app migrate --drop-removed`") in message
    assert 'ALTER TABLE "app_note" DROP COLUMN "amount"' in message

    conn = connect(app.config["DATABASE"])
    result = migrate.migrate(conn, schema, fields, drop_removed=True)
    assert result.steps[:2] == [
        'set "app_note"."amount" (no longer in the spec, in the way of a rename) aside to drop it',
        'renamed column "app_note"."title" to "amount"',
    ]
    assert notes(conn, '"amount"') == [("one",), ("two",), ("two",)]
    assert list(migrate.column_types(conn, "app_note")) == ["id", "account_id", "amount"]
    conn.close()


def test_a_field_renamed_twice_before_migrate_is_refused(app, db):
    """title -> t2 -> t3, with no migrate in between: renamed_from "t2" names no column."""
    db.close()
    message = refused(app, note_schema(['"amount" INTEGER', '"t3" TEXT']),
                      entities({"amount": ("integer", None, None), "t3": ("string", None, "t2")}))
    assert ('"app_note"."t3" is renamed_from "t2", but the table has no column "t2" (nor "t3"); it has '
            '"title", which the spec no longer has. If "t3" holds the data of one of these (renamed more '
            'than once since the last migrate), set renamed_from to that name; if "t3" is a new field, '
            "remove its renamed_from") in message


def test_a_new_field_renamed_before_migrate_is_created_beside_a_kept_column(app, db):
    """"amount" removed (kept); then "t2" added and renamed "t3" with no migrate between:
    renamed_from "t2" names no column, and the kept "amount" has nothing to do with it."""
    migrate.migrate(db, note_schema(['"title" TEXT']), entities({"title": ("string", None, None)}))
    result = migrate.migrate(db, note_schema(['"title" TEXT', '"t3" TEXT']),
                             entities({"title": ("string", None, None), "t3": ("string", None, "t2")}))
    assert result.steps == ['rebuilt table "app_note" (3 rows): added "t3"; kept "amount" (no longer in the spec)']
    assert notes(db, '"amount", "title", "t3"') == [(12, "one", None), (None, "two", None), (7, "two", None)]


def test_a_record_from_before_the_kept_mark_never_refuses_a_rename(app, db):
    """An older app_migration record cannot tell a field of the spec from a kept one: the
    rename goes on, the unnamed data is kept (not lost), and the migration says so."""
    row_id, recorded = db.execute('SELECT "id", "entities" FROM "app_migration" ORDER BY "id" DESC').fetchone()
    older = json.loads(recorded)
    for entity in older.values():
        del entity["kept"]
        for meaning in entity["fields"].values():
            del meaning["kept"]
    db.execute('UPDATE "app_migration" SET "entities" = ? WHERE "id" = ?', (json.dumps(older), row_id))
    db.commit()
    result = migrate.migrate(db, note_schema(['"amount" INTEGER', '"t3" TEXT']),
                             entities({"amount": ("integer", None, None), "t3": ("string", None, "t2")}))
    assert 'column "app_note"."title" is no longer in the spec; its data is kept (--drop-removed drops it)' in result.kept
    assert notes(db, '"title"') == [("one",), ("two",), ("two",)]


def two_notes(app):
    """note_a (two rows) and note_b (one row), then note_b removed from the spec (kept)."""
    conn = connect(app.config["DATABASE"])
    both = note_schema(['"title" TEXT'], table="note_a") + NOTE.format(table="note_b", columns='"title" TEXT')
    title = {"title": ("string", None, None)}
    migrate.migrate(conn, both, {**entities(title, "note_a"), "note_b": entities(title)["app_note"]})
    conn.execute("INSERT INTO account (name) VALUES ('Acme')")
    conn.executescript("""INSERT INTO "note_a" ("account_id", "title") VALUES (1, 'a1'), (1, 'a2');
                          INSERT INTO "note_b" ("account_id", "title") VALUES (1, 'old b');""")
    migrate.migrate(conn, note_schema(['"title" TEXT'], table="note_a"), entities(title, "note_a"))
    conn.close()


def test_an_entity_rename_onto_a_kept_table_is_refused_until_it_is_dropped(app):
    two_notes(app)
    schema = note_schema(['"title" TEXT'], table="note_b")
    fields = entities({"title": ("string", None, None)}, "note_b", "note_a")
    message = refused(app, schema, fields)
    assert ('table "note_a" cannot be renamed to "note_b" (renamed_from): a table "note_b" that the spec no '
            "longer has is still there, kept with its 1 row.") in message
    assert 'by hand (DROP TABLE "note_b")' in message

    conn = connect(app.config["DATABASE"])
    result = migrate.migrate(conn, schema, fields, drop_removed=True)
    assert result.steps[:2] == ['dropped table "note_b" and its 1 row (no longer in the spec, in the way of a rename)',
                                'renamed table "note_a" to "note_b"']
    assert [tuple(r) for r in conn.execute('SELECT "title" FROM "note_b" ORDER BY "id"')] == [("a1",), ("a2",)]
    conn.close()


def test_an_entity_renamed_twice_before_migrate_is_refused(app):
    two_notes(app)
    message = refused(app, note_schema(['"title" TEXT'], table="note_c"),
                      entities({"title": ("string", None, None)}, "note_c", "note_x"))
    assert ('entity "note_c" is renamed_from "note_x", but the database has no table "note_x" (nor "note_c"); '
            'it has "note_a", which the spec no longer has.') in message  # not "note_b", kept before


def test_a_new_entity_renamed_before_migrate_is_created_beside_a_kept_table(app):
    """note_b kept; then note_c added and renamed note_d with no migrate between: the
    database is older than the entity, which is created empty; note_b stays kept."""
    two_notes(app)
    title = {"title": ("string", None, None)}
    conn = connect(app.config["DATABASE"])
    result = migrate.migrate(
        conn, note_schema(['"title" TEXT'], table="note_a") + NOTE.format(table="note_d", columns='"title" TEXT'),
        {**entities(title, "note_a"), "note_d": entities(title, "note_d", "note_c")["note_d"]})
    assert 'created table "note_d"' in result.steps
    assert result.kept == ['table "note_b" (1 row) is no longer in the spec; its data is kept (--drop-removed drops it)']
    conn.close()


def test_a_refusal_lists_every_problem_of_every_row_at_once(app, db):
    """A CHECK, a new required field without a default and a new UNIQUE, all broken:
    one run lists them all, so the spec is fixed in one round."""
    db.close()
    message = refused(app, note_schema([
        '"amount" INTEGER CHECK ("amount" > 10)', '"title" TEXT CHECK ("title" IN (\'one\'))',
        '"done" INTEGER NOT NULL', 'UNIQUE ("account_id", "title")']),
        entities({"amount": ("integer", None, None), "title": ("string", None, None), "done": ("boolean", None, None)}))
    hint = "a new required field: give it a `default` in the spec, which fills the existing rows"
    assert message.splitlines()[1:] == [
        f'  "app_note" id 1: NOT NULL constraint failed: app_note.done: {hint}',
        f'  "app_note" id 2: NOT NULL constraint failed: app_note.done: {hint}',
        '  "app_note" id 2: CHECK constraint failed: title (title=\'two\')',
        f'  "app_note" id 3: NOT NULL constraint failed: app_note.done: {hint}',
        '  "app_note" id 3: CHECK constraint failed: amount (amount=7)',
        '  "app_note" id 3: CHECK constraint failed: title (title=\'two\')',
        '  "app_note" ids 2, 3: same account_id=1, title=\'two\' (UNIQUE constraint of the new schema)',
    ]
