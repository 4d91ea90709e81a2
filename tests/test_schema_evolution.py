"""Schema evolution (issue 5): a changed spec reaches a live database with no data lost.

Real apps are generated into tmp, filled with data in every table through plain SQL,
then their spec is changed step by step; after each `vgen generate` (copier update) the
app's own `flask --app app migrate` must keep every committed value, convert only what
the spec asked to convert, and refuse, changing nothing, what the data cannot take.
"""

from __future__ import annotations

import collections
import copy
import datetime
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest
import tomlkit
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from generator import schema as schema_plan_module
from generator import spec as specs

from conftest import ROOT, app_env, generate, run_app_tests, write_spec

EXAMPLES = ["cheesemaking", "childmilestone", "coachboard", "honeybees", "shiftfill"]
ROWS_PER_ACCOUNT = 4  # per entity; every 4th row leaves its optional fields empty


# -- helpers: specs, apps, data ----------------------------------------------------


def load_spec(project, slug) -> dict:
    return tomllib.loads(project.spec_path(slug).read_text())


def save_spec(project, slug, data: dict) -> None:
    write_spec(project, slug, tomlkit.dumps(data))


def regenerate(project, slug, data: dict, changed=True) -> None:
    save_spec(project, slug, data)
    outcome = generate(project, [slug])[slug]
    expected = ("created", "updated") if changed else ("unchanged",)
    assert outcome.status in expected, f"{outcome.status}: {outcome.message}"


def normalized(project, slug) -> specs.Vertical:
    return specs.load_vertical(project.spec_path(slug))


def flask_migrate(app_dir: Path, data_dir: Path, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "migrate", *args],
        cwd=app_dir, env={**app_env(app_dir, data_dir), **(env or {})},
        capture_output=True, text=True,
    )


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys = ON")
    return db


def scaled(text, places):
    return int(Decimal(str(text)).scaleb(places))


def value_for(field: specs.Field, n: int, refs: dict[str, list[int]]):
    """A valid stored value for field (row number n); None for some optional fields."""
    if not field.required and field.type != "boolean" and n % ROWS_PER_ACCOUNT == 3:
        return None
    t = field.type
    if t == "string":
        return f"v{n}"[: field.max_length]
    if t == "text":
        return f"text {n}\nsecond line"
    if t == "email":
        return f"u{n}@example.com"
    if t == "url":
        return f"https://example.com/{n}"
    if t == "choice":
        return field.choices[n % len(field.choices)]
    if t == "integer":
        low = field.min if field.min is not None else 0
        high = field.max if field.max is not None else low + 1000
        return low + n % (high - low + 1)
    if t == "decimal":
        low = scaled(field.min, field.places) if field.min is not None else 0
        high = scaled(field.max, field.places) if field.max is not None else low + 100000
        return low + (n * 37) % (high - low + 1)
    if t == "boolean":
        return n % 2
    if t == "date":
        return (datetime.date(2024, 1, 1) + datetime.timedelta(days=n)).isoformat()
    if t == "datetime":
        return (datetime.datetime(2024, 1, 1, 8) + datetime.timedelta(hours=n)).isoformat()
    if t == "ref":
        ids = refs.get(field.to) or []
        return ids[n % len(ids)] if ids else None
    raise AssertionError(t)


def fill(db_path: Path, vertical: specs.Vertical, only=None, start=0) -> None:
    """Rows in every entity table (or `only`), for two accounts, through plain SQL."""
    db = open_db(db_path)
    accounts = [r[0] for r in db.execute('SELECT "id" FROM "account" ORDER BY "id"')]
    while len(accounts) < 2:
        accounts.append(db.execute("INSERT INTO account (name) VALUES (?)", (f"acct{len(accounts)}",)).lastrowid)
    pending = [e for e in vertical.entities if only is None or e.name in only]
    order = []
    while pending:  # targets of required refs first
        ready = [e for e in pending if all(f.to == e.name or f.to not in {p.name for p in pending}
                                           for f in e.fields if f.type == "ref" and f.required)]
        order += ready
        pending = [e for e in pending if e not in ready]
    n = start
    for account in accounts:
        for entity in order:
            for _ in range(ROWS_PER_ACCOUNT):
                refs = {
                    f.to: [r[0] for r in db.execute(f'SELECT "id" FROM "{f.to}" WHERE "account_id" = ?', (account,))]
                    for f in entity.fields if f.type == "ref"
                }
                n += 1
                values = {f.name: value_for(f, n, refs) for f in entity.fields}
                columns = ["account_id", "created_at", "updated_at", *values]
                db.execute(
                    f'INSERT INTO "{entity.name}" ({", ".join(chr(34) + c + chr(34) for c in columns)})'
                    f' VALUES ({", ".join("?" for _ in columns)})',
                    [account, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", *values.values()],
                )
    db.commit()
    db.close()


def snapshot(db_path: Path) -> dict:
    """{table: {id: {column: value}}} of every table but the app's internal ones."""
    db = sqlite3.connect(db_path)
    tables = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name NOT LIKE 'app_%' AND name != 'login_attempt'")]
    result = {}
    for table in tables:
        cursor = db.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cursor.description]
        result[table] = {row["id"]: row for row in (dict(zip(names, r)) for r in cursor)}
    db.close()
    return result


def assert_sound(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


def assert_kept(before, after, tables=None, columns=None, convert=None, dropped=()):
    """Every value of `before` is in `after`, renamed and converted as the step says."""
    tables, columns, convert = tables or {}, columns or {}, convert or {}
    for table, rows in before.items():
        new_table = tables.get(table, table)
        if (table, None) in dropped:
            assert new_table not in after
            continue
        assert new_table in after, f"table {table} is gone"
        assert set(after[new_table]) >= set(rows), f"rows of {table} are gone"
        for id, row in rows.items():
            for column, value in row.items():
                if (table, column) in dropped:
                    assert column not in after[new_table][id]
                    continue
                new_column = columns.get((table, column), column)
                expected = convert[(table, column)](value) if (table, column) in convert and value is not None else value
                got = after[new_table][id].get(new_column, "<missing>")
                assert got == expected, f"{table}.{column} of row {id}: {got!r} != {expected!r}"


def db_bytes(db_path: Path) -> str:
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    return hashlib.sha256(db_path.read_bytes()).hexdigest()


def refused(app: Path, data: Path, db_path: Path, *messages: str) -> subprocess.CompletedProcess:
    """flask migrate refuses with each of the messages, and the database is unchanged."""
    before = db_bytes(db_path)
    result = flask_migrate(app, data)
    assert result.returncode == 1, result.stdout + result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr
    assert db_bytes(db_path) == before
    return result


def regenerate_refused(project, slug, data: dict, *messages: str) -> subprocess.CompletedProcess:
    """vgen generate refuses the spec change, whose schema the app's database cannot
    take: its outcome says why in migrate's words (each of the messages), and the app
    and its database are left as they were. The refused code, set aside on its branch,
    refuses too when its own migrate runs on the database; returns that run."""
    app = project.app_dir(slug)
    db_path = app / "instance" / f"{slug}.db"
    head, files, before = git_head(app), git_status(app), db_bytes(db_path)
    save_spec(project, slug, data)
    outcome = generate(project, [slug])[slug]
    assert outcome.status == "refused", f"{outcome.status}: {outcome.message}"
    for message in messages:
        assert message in outcome.message, outcome.message
    assert "change the spec back; then run vgen generate" in outcome.message
    assert (git_head(app), git_status(app), db_bytes(db_path)) == (head, files, before)
    code = app.parent / f"{slug}-refused"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir()
    archive = subprocess.run(["git", "archive", "vgen/refused"], cwd=app, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    return refused(code, app / "instance", db_path, "migration refused, the database is unchanged", *messages)


def git_head(app: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=app, capture_output=True, text=True).stdout


def git_status(app: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=app, capture_output=True, text=True).stdout


# -- the acceptance matrix ---------------------------------------------------------


def first_field(entity: dict, type_: str, **where) -> dict | None:
    for f in entity["fields"]:
        if f["type"] == type_ and all(f.get(k) == v for k, v in where.items()):
            return f
    return None


@pytest.mark.slow
@pytest.mark.parametrize("slug", EXAMPLES)
def test_schema_evolution_matrix(project, slug):
    generate(project, [slug])
    app = project.app_dir(slug)
    data = app / "instance"
    db_path = data / f"{slug}.db"
    assert flask_migrate(app, data).returncode == 0
    fill(db_path, normalized(project, slug))
    spec = load_spec(project, slug)
    target = spec["entities"][0]  # the entity every step changes
    name = target["name"]

    def step(change, *args, **expect):
        before = snapshot(db_path)
        if change:
            change(spec)
        regenerate(project, slug, spec, changed=change is not None)
        if slug == EXAMPLES[0] and not args:  # vgen generate --dry-run's plan: what migrate then does
            unchanged = db_bytes(db_path)
            plan = schema_plan_module.schema_plan(app, data).splitlines()
            assert db_bytes(db_path) == unchanged
        result = flask_migrate(app, data, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        if slug == EXAMPLES[0] and not args:
            applied = [line for line in result.stdout.splitlines() if not line.startswith("Backup taken")]
            assert plan[:-1] == applied[:-1]
            assert "dry run, nothing written" in plan[-1]
        after = snapshot(db_path)
        assert_kept(before, after, **expect)
        assert_sound(db_path)
        return result, before, after

    # 1. A field of each type, optional, and required ones with a default.
    new_fields = [
        {"name": "mf_string", "type": "string", "max_length": 50},
        {"name": "mf_text", "type": "text"},
        {"name": "mf_int", "type": "integer", "min": 0, "max": 100},
        {"name": "mf_dec", "type": "decimal", "places": 2},
        {"name": "mf_bool", "type": "boolean"},
        {"name": "mf_date", "type": "date"},
        {"name": "mf_dt", "type": "datetime"},
        {"name": "mf_email", "type": "email"},
        {"name": "mf_url", "type": "url"},
        {"name": "mf_choice", "type": "choice", "choices": ["a", "b"]},
        {"name": "mf_ref", "type": "ref", "to": name, "on_delete": "set_null"},
        {"name": "mf_req", "type": "string", "required": True, "default": "xyz", "max_length": 50},
        {"name": "mf_req_int", "type": "integer", "required": True, "default": 7},
        {"name": "mf_req_dec", "type": "decimal", "places": 1, "required": True, "default": 2.5},
    ]
    result, before, after = step(lambda s: target["fields"].extend(copy.deepcopy(new_fields)))
    for row in after[name].values():
        assert (row["mf_req"], row["mf_req_int"], row["mf_req_dec"], row["mf_bool"]) == ("xyz", 7, 25, 0)
        assert row["mf_string"] is None and row["mf_ref"] is None
    assert "Backup taken before migrating:" in result.stdout
    backup = Path(result.stdout.split("Backup taken before migrating: ")[1].split()[0])
    assert snapshot(backup) == before  # the backup holds the data as it was
    fill(db_path, normalized(project, slug), only={name}, start=1000)  # data in the new columns

    # 2. A new entity with a ref.
    def add_entity(s):
        s["entities"].append({"name": "mig_extra", "fields": [
            {"name": "label", "type": "string", "required": True},
            {"name": "owner", "type": "ref", "to": name, "required": True, "on_delete": "cascade"},
        ]})
    result, _, _ = step(add_entity)
    assert 'created table "mig_extra"' in result.stdout
    assert "Backup taken" not in result.stdout  # nothing existing was touched
    fill(db_path, normalized(project, slug), only={"mig_extra"}, start=2000)

    # 3. Rename a field, 4. rename an entity (its refs from other tables follow).
    def rename_field(s):
        field = next(f for f in target["fields"] if f["name"] == "mf_string")
        field.update(name="mf_string2", renamed_from="mf_string")
    result, _, _ = step(rename_field, columns={(name, "mf_string"): "mf_string2"})
    assert f'renamed column "{name}"."mf_string" to "mf_string2"' in result.stdout

    new_name = f"{name}_v2"

    def rename_entity(s):
        target.update(name=new_name, renamed_from=name)
        target.setdefault("plural", name.replace("_", " ") + "s")
        for e in s["entities"]:
            for f in e["fields"]:
                if f.get("to") == name:
                    f["to"] = new_name
    result, _, after = step(rename_entity, tables={name: new_name})
    assert f'renamed table "{name}" to "{new_name}"' in result.stdout
    db = sqlite3.connect(db_path)
    for pattern in (f'%REFERENCES "{name}"%', f'%TABLE "{name}"%', f'% ON "{name}"%'):
        assert not db.execute("SELECT sql FROM sqlite_master WHERE sql LIKE ?", (pattern,)).fetchall()
    indexes = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name = ?",
                                      (new_name,))]
    assert indexes and all(i.startswith(new_name + "(") for i in indexes)
    db.close()
    name = new_name

    # 5. integer -> decimal (values scaled), 6. string -> text.
    def to_decimal(s):
        next(f for f in target["fields"] if f["name"] == "mf_int").update(type="decimal", places=2)
    step(to_decimal, convert={(name, "mf_int"): lambda v: v * 100})

    def to_text(s):
        field = next(f for f in target["fields"] if f["name"] == "mf_string2")
        field.update(type="text")
        field.pop("max_length", None)
    step(to_text)

    # 7. Tighten max_length and min/max to what the data still fits.
    db = sqlite3.connect(db_path)
    longest = db.execute(f'SELECT max(length("mf_req")) FROM "{name}"').fetchone()[0]
    low, high = db.execute(f'SELECT min("mf_req_int"), max("mf_req_int") FROM "{name}"').fetchone()
    db.close()

    def tighten(s):
        next(f for f in target["fields"] if f["name"] == "mf_req")["max_length"] = longest
        next(f for f in target["fields"] if f["name"] == "mf_req_int").update(min=low, max=high)
    step(tighten)

    # 8. Add unique (the values are distinct within each account).
    step(lambda s: next(f for f in target["fields"] if f["name"] == "mf_email").update(unique=True))

    # 9. Remove a field and an entity: kept, with their data, and said so.
    def remove(s):
        target["fields"][:] = [f for f in target["fields"] if f["name"] != "mf_url"]
        s["entities"][:] = [e for e in s["entities"] if e["name"] != "mig_extra"]
    result, _, after = step(remove)
    assert f'column "{name}"."mf_url" is no longer in the spec; its data is kept' in result.stdout
    assert 'table "mig_extra"' in result.stdout and "its data is kept" in result.stdout
    assert smoke(app, data, normalized(project, slug)) == "ok"  # the app writes with kept columns

    # 10. --drop-removed drops them, and nothing else.
    result, _, _ = step(None, "--drop-removed",
                        dropped={(name, "mf_url"), ("mig_extra", None)})
    assert 'dropped "mf_url" and its data' in result.stdout
    assert 'dropped table "mig_extra"' in result.stdout
    again = flask_migrate(app, data)
    assert again.stdout.strip().endswith("up to date, nothing to do.")
    assert smoke(app, data, normalized(project, slug)) == "ok"
    if slug == EXAMPLES[0]:  # once for the whole sequence: the suite is long enough
        tests = run_app_tests(app)
        assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]


SMOKE = """
import sys
sys.path[:0] = [".", "tests"]
import factories
from app import create_app

app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False,
                  "PASSWORD_HASH_METHOD": "scrypt:1024:8:1", "DATA_DIR": sys.argv[1]})
client = app.test_client()
email = f"smoke{__import__('secrets').token_hex(4)}@example.com"
from conftest import AuthActions  # the app's own: it opens the link mailed to finish
r = AuthActions(client).signup(email=email, account="Smoke")
assert r.status_code == 302, r.status_code
for name, url in %s:
    id = getattr(factories, "create_" + name)(client)
    for page in (f"/{url}/", f"/{url}/{id}", f"/{url}/{id}/edit", f"/{url}/export.csv"):
        r = client.get(page)
        assert r.status_code == 200, (page, r.status_code)
print("ok")
"""


def smoke(app_dir: Path, data_dir: Path, vertical: specs.Vertical) -> str:
    """Sign up and create, show, edit and export a record of every entity, on the live DB."""
    entities = [(e.name, e.url) for e in vertical.entities]
    done = subprocess.run([sys.executable, "-c", SMOKE % (entities,), str(data_dir)], cwd=app_dir,
                          env=app_env(app_dir, data_dir), capture_output=True, text=True)
    return done.stdout.strip() or done.stderr[-3000:]


# -- impossible migrations ---------------------------------------------------------


def filled_app(project, slug):
    """The app generated and migrated, with data in every table: (app, data, db_path)."""
    generate(project, [slug])
    app, data = project.app_dir(slug), project.app_dir(slug) / "instance"
    db_path = data / f"{slug}.db"
    assert flask_migrate(app, data).returncode == 0
    fill(db_path, normalized(project, slug))
    return app, data, db_path


@pytest.mark.slow
def test_impossible_migrations_are_refused_with_rows_listed_and_nothing_changed(project):
    slug = "cheesemaking"
    app, data, db_path = filled_app(project, slug)
    db = open_db(db_path)
    db.execute("UPDATE customer SET name = 'same' WHERE account_id = 1")  # duplicates
    db.commit()
    db.close()
    base = load_spec(project, slug)

    def field(s, entity, name):
        return next(f for e in s["entities"] if e["name"] == entity for f in e["fields"] if f["name"] == name)

    cases = [
        # NOT NULL without a default over NULL rows
        (lambda s: field(s, "batch", "notes").update(required=True),
         "NOT NULL constraint failed: batch.notes (notes=None): required now: fill the empty values first, "
         "or give the field a `default` in the spec"),
        # unique over duplicates
        (lambda s: field(s, "customer", "name").update(unique=True),
         "UNIQUE constraint failed: customer.account_id, customer.name"),
        # a choice narrowed under existing values
        (lambda s: field(s, "batch", "style").update(choices=["cheddar"]),
         "CHECK constraint failed: style (style="),
        # text to integer over text that is not a number
        (lambda s: (field(s, "batch", "notes").update(type="integer"),
                    next(e for e in s["entities"] if e["name"] == "batch").update(search=["code"])),
         "is not a whole number"),
    ]
    for change, message in cases:
        spec = copy.deepcopy(base)
        change(spec)
        result = regenerate_refused(project, slug, spec, message)
        assert re.search(r'^  "\w+" ids? \d+', result.stderr, re.M), result.stderr  # the rows, by id


# -- kill -9 in the middle ---------------------------------------------------------


def master(db_path: Path) -> list:
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'app_%' ORDER BY name").fetchall()
    db.close()
    return rows


@pytest.mark.slow
def test_a_killed_migration_leaves_the_old_or_the_new_database(project, tmp_path):
    slug = "cheesemaking"
    app, data, db_path = filled_app(project, slug)
    db = open_db(db_path)
    batch = db.execute("SELECT id, account_id FROM batch LIMIT 1").fetchone()
    db.executemany(
        "INSERT INTO tasting (account_id, batch, tasted_on, score, created_at, updated_at)"
        " VALUES (?, ?, '2024-01-01', ?, 't', 't')",
        ((batch[1], batch[0], 1 + i % 10) for i in range(60000)),
    )
    db.commit()
    db.close()
    spec = load_spec(project, slug)
    score = next(f for e in spec["entities"] if e["name"] == "tasting" for f in e["fields"] if f["name"] == "score")
    score.update(type="decimal", places=1)  # every tasting row is rewritten
    regenerate(project, slug, spec)
    old = (master(db_path), snapshot(db_path))
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / db_path.name).write_bytes(db_path.read_bytes())
    assert flask_migrate(app, reference).returncode == 0
    new = (master(reference / db_path.name), snapshot(reference / db_path.name))
    assert new[1]["tasting"] == {
        id: {**row, "score": row["score"] and row["score"] * 10} for id, row in old[1]["tasting"].items()
    }

    def killed(delay=None):
        env = {**app_env(app, data)}
        if delay is None:
            env["MIGRATE_PAUSE_BEFORE_COMMIT"] = "60"
        proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if delay is None:
            line = proc.stderr.readline()  # the migration is done, only COMMIT is left
            assert "pausing" in line, line + proc.stderr.read()
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_sound(db_path)
        state = (master(db_path), snapshot(db_path))
        assert state in (old, new)
        print(f"killed after {delay}s: {'old' if state == old else 'new'} state")  # pytest -s
        return state

    assert killed() == old  # at the last moment before COMMIT: nothing was committed
    for delay in (0.4, 0.9, 1.5, 2.5):  # during the copy, or later
        if killed(delay) == new:
            break
    assert flask_migrate(app, data).returncode == 0
    assert (master(db_path), snapshot(db_path)) == new


# -- property: random spec changes on random data ----------------------------------

JINJA = jinja2.Environment(
    block_start_string="[%", block_end_string="%]", variable_start_string="[[",
    variable_end_string="]]", comment_start_string="[#", comment_end_string="#]",
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    loader=jinja2.FileSystemLoader(ROOT),  # for the template's macros.jinja
)
BASE = {
    "slug": "evolving",
    "name": "Evolving",
    "entities": [
        {"name": "thing", "fields": [
            {"name": "s", "type": "string", "max_length": 40},
            {"name": "n", "type": "integer"},
            {"name": "d", "type": "decimal", "places": 2},
            {"name": "t", "type": "text"},
            {"name": "c", "type": "choice", "choices": ["a", "b", "c"]},
            {"name": "b", "type": "boolean"},
            {"name": "on", "type": "date"},
            {"name": "at", "type": "datetime"},
        ]},
        {"name": "part", "fields": [
            {"name": "label", "type": "string", "max_length": 40},
            {"name": "thing", "type": "ref", "to": "thing", "on_delete": "set_null"},
            {"name": "qty", "type": "integer"},
        ]},
    ],
}
DEFAULTS = {  # (spec default, stored value) for a required field added with a default
    "string": ("dflt", "dflt"), "text": ("dflt", "dflt"), "integer": (5, 5),
    "decimal": ("1.5", 150), "boolean": (True, 1), "date": (datetime.date(2024, 1, 1), "2024-01-01"),
    "datetime": (datetime.datetime(2024, 1, 1, 8, 0), "2024-01-01T08:00:00"),
    "email": ("a@b.co", "a@b.co"), "url": ("https://x.example", "https://x.example"),
    "choice": ("a", "a"),
}
RETYPES = [  # (from, to, extra spec keys)
    ("integer", "decimal", {"places": 2}), ("decimal", "integer", {}), ("string", "text", {}),
    ("text", "string", {"max_length": 200}), ("integer", "string", {"max_length": 200}),
    ("string", "integer", {}), ("choice", "string", {"max_length": 200}),
    ("date", "datetime", {}), ("datetime", "date", {}),
]
STRING_OPTIONS = {"max_length"}
TYPE_OPTIONS = {"max_length", "places", "choices", "to", "on_delete", "min", "max"}

texts = st.one_of(st.from_regex(r"[0-9]{1,4}", fullmatch=True), st.text("ab1 -", min_size=1, max_size=8))
ROW_VALUES = {
    "s": texts, "n": st.integers(-1000, 1000), "d": st.integers(-10**6, 10**6),
    "t": st.text("xyz 19\n", min_size=1, max_size=20), "c": st.sampled_from("abc"),
    "on": st.dates(datetime.date(2000, 1, 1), datetime.date(2030, 12, 31)).map(str),
    "at": st.datetimes(datetime.datetime(2000, 1, 1), datetime.datetime(2030, 1, 1)).map(
        lambda d: d.replace(microsecond=0, hour=d.hour % 2 * 8, minute=0, second=0).isoformat()),
    "label": texts, "qty": st.integers(0, 50),
}


def stored_default(field: dict):
    if field["type"] == "boolean":
        return 1 if field.get("default") else 0
    if not field.get("required") or "default" not in field:
        return None
    return DEFAULTS[field["type"]][1]


def oracle(value, old: dict, new: dict):
    """What the stored value becomes when the field's type changes; raises if it cannot."""
    if value is None:
        return None
    o, n = old["type"], new["type"]
    if (o, n) == ("integer", "decimal"):
        return value * 10 ** new["places"]
    if (o, n) == ("decimal", "integer"):
        if value % 10 ** old["places"]:
            raise ValueError
        return value // 10 ** old["places"]
    if (o, n) in (("string", "text"), ("choice", "string"), ("text", "string")):
        if n == "string" and len(value) > new["max_length"]:
            raise ValueError
        return value
    if (o, n) == ("integer", "string"):
        return str(value)
    if (o, n) == ("string", "integer"):
        if not re.fullmatch(r"[+-]?[0-9]+", value.strip()):
            raise ValueError
        return int(value)
    if (o, n) == ("date", "datetime"):
        return value + "T00:00:00"
    if (o, n) == ("datetime", "date"):
        if not value.endswith("T00:00:00"):
            raise ValueError
        return value[:10]
    raise AssertionError((o, n))


def render_schema(vertical: specs.Vertical) -> str:
    sql = JINJA.from_string((ROOT / "template/app/schema.sql.jinja").read_text()).render(**vertical.answers(8100))
    return (ROOT / "template/app/schema_auth.sql").read_text() + "\n" + sql


def entity_meanings(vertical: specs.Vertical) -> dict:
    """What the template writes as ENTITIES in app/migrate.py."""
    return {
        e.name: {"renamed_from": e.renamed_from, "fields": {
            f.name: {"type": f.type, "places": f.places, "to": f.to, "renamed_from": f.renamed_from}
            for f in e.fields}}
        for e in vertical.entities
    }


@pytest.mark.slow
def test_random_spec_changes_never_lose_a_committed_value(project, tmp_path):
    write_spec(project, "evolving", tomlkit.dumps(BASE))
    generate(project, ["evolving"])
    sys.path.insert(0, str(project.app_dir("evolving")))
    try:
        import app.migrate as migrate_module
        run_property(migrate_module, tmp_path)
    finally:
        sys.path.remove(str(project.app_dir("evolving")))
        for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
            del sys.modules[name]


def run_property(migrate_module, tmp_path):
    counter = iter(range(10**9))
    outcomes = collections.Counter()  # shown with pytest -s: what the examples exercised

    @settings(max_examples=int(os.environ.get("SCHEMA_EXAMPLES", 25)), deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(st.data())
    def check(data):
        spec = copy.deepcopy(BASE)
        path = tmp_path / f"run{next(counter)}" / "evolving.toml"
        path.parent.mkdir()
        db_path = path.parent / "evolving.db"

        def load(s):
            path.write_text(tomlkit.dumps(s))
            return specs.load_vertical(path)

        def migrate(vertical, drop_removed=False):
            conn = sqlite3.connect(db_path)
            try:
                return migrate_module.migrate(conn, render_schema(vertical), entity_meanings(vertical),
                                              drop_removed=drop_removed)
            finally:
                conn.close()

        migrate(load(spec))
        # Random rows in two accounts; model[table][id] = {column: stored value}.
        db = open_db(db_path)
        db.executemany("INSERT INTO account (id, name) VALUES (?, ?)", [(1, "a"), (2, "b")])
        model = {"thing": {}, "part": {}}
        for table in ("thing", "part"):
            fields = next(e for e in spec["entities"] if e["name"] == table)["fields"]
            for _ in range(data.draw(st.integers(0, 6), label=f"{table} rows")):
                row = {"account_id": data.draw(st.sampled_from([1, 2]))}
                for f in fields:
                    if f["type"] == "boolean":
                        row[f["name"]] = data.draw(st.sampled_from([0, 1]))
                    elif f["type"] == "ref":  # as the app does: a row of the same account
                        row[f["name"]] = data.draw(st.sampled_from([None, *(
                            id for id, thing in model["thing"].items() if thing["account_id"] == row["account_id"])]))
                    else:
                        row[f["name"]] = data.draw(st.one_of(st.none(), ROW_VALUES[f["name"]]))
                columns = [*row, "created_at", "updated_at"]
                id = db.execute(
                    f'INSERT INTO "{table}" ({", ".join(chr(34) + c + chr(34) for c in columns)})'
                    f' VALUES ({", ".join("?" for _ in columns)})', [*row.values(), "t", "t"],
                ).lastrowid
                model[table][id] = row
        db.commit()
        db.close()
        kept = set()  # (table, column) removed from the spec, kept in the database
        fresh = iter(f"x{i}" for i in range(1000))

        for _ in range(data.draw(st.integers(1, 5), label="steps")):
            new_spec = copy.deepcopy(spec)
            entity = data.draw(st.sampled_from(new_spec["entities"]), label="entity")
            table = entity["name"]
            fields = entity["fields"]
            op = data.draw(st.sampled_from(["add", "remove", "rename", "rename_entity", "retype",
                                            "tighten", "require", "unique", "narrow"]), label="op")
            drop_removed = data.draw(st.booleans(), label="drop_removed")
            expected = copy.deepcopy(model)
            possible = True
            renamed_table = None
            if op == "add":
                type_ = data.draw(st.sampled_from(sorted(DEFAULTS)), label="type")
                field = {"name": next(fresh), "type": type_}
                field.update({"choice": {"choices": ["a", "b"]}, "decimal": {"places": 2}}.get(type_, {}))
                if type_ != "boolean" and data.draw(st.booleans(), label="required"):
                    field.update(required=True, default=DEFAULTS[type_][0])
                fields.append(field)
                for row in expected[table].values():
                    row[field["name"]] = stored_default(field)
            elif op == "rename_entity":
                new_name = next(fresh)
                entity.update(name=new_name, renamed_from=table)
                for e in new_spec["entities"]:
                    for f in e["fields"]:
                        if f.get("to") == table:
                            f["to"] = new_name
                expected[new_name] = expected.pop(table)
                kept = {(new_name if t == table else t, c) for t, c in kept}
                renamed_table = (table, new_name)
            else:
                field = data.draw(st.sampled_from(fields), label="field")
                name = field["name"]
                values = [row[name] for row in expected[table].values()]
                if op == "remove":
                    if len(fields) == 1:
                        continue
                    fields.remove(field)
                    kept.add((table, name))
                elif op == "rename":
                    field.update(name=next(fresh), renamed_from=name)
                    for row in expected[table].values():
                        row[field["name"]] = row.pop(name)
                elif op == "retype":
                    choices = [r for r in RETYPES if r[0] == field["type"]]
                    if not choices:
                        continue
                    _, new_type, extra = data.draw(st.sampled_from(choices), label="retype")
                    old = dict(field)
                    for key in TYPE_OPTIONS:
                        field.pop(key, None)
                    field.update(type=new_type, **extra)
                    field.pop("default", None)
                    try:
                        for row in expected[table].values():
                            row[name] = oracle(row[name], old, field)
                    except ValueError:
                        possible = False
                elif op == "tighten":
                    if field["type"] == "string":
                        field["max_length"] = data.draw(st.integers(1, 10), label="max_length")
                        possible = all(v is None or len(v) <= field["max_length"] for v in values)
                    elif field["type"] == "integer":
                        low = data.draw(st.integers(-1000, 0), label="min")
                        field.update(min=low, max=low + data.draw(st.integers(0, 2000), label="span"))
                        possible = all(v is None or field["min"] <= v <= field["max"] for v in values)
                    else:
                        continue
                elif op == "require":
                    if field["type"] in ("boolean", "ref"):
                        continue
                    field["required"] = True
                    field.pop("default", None)
                    possible = None not in values and all(v != "" for v in values)
                elif op == "unique":
                    if field["type"] in ("boolean", "text"):
                        continue
                    field["unique"] = True
                    pairs = [(row["account_id"], row[name]) for row in expected[table].values() if row[name] is not None]
                    possible = len(pairs) == len(set(pairs))
                elif op == "narrow":
                    if field["type"] != "choice" or len(field["choices"]) < 2:
                        continue
                    field["choices"] = field["choices"][:-1]
                    possible = all(v is None or v in field["choices"] for v in values)
            try:
                vertical = load(new_spec)
            except specs.VgenError:
                outcomes[f"{op}: not a valid spec"] += 1
                continue  # a change vgen check refuses never reaches an app
            if drop_removed:
                for t, c in kept:
                    for row in expected[t].values():
                        row.pop(c, None)
            before = (master(db_path), snapshot(db_path))
            try:
                migrate(vertical, drop_removed)
            except migrate_module.MigrationRefused as refused:
                assert not possible, f"{op} refused: {refused}"
                outcomes[f"{op}: refused"] += 1
                assert (master(db_path), snapshot(db_path)) == before
                continue
            assert possible, f"{op} should have been refused"
            outcomes[f"{op}: applied"] += 1
            after = snapshot(db_path)
            for t, rows in expected.items():
                for id, row in rows.items():
                    got = {c: after[t][id].get(c, "<missing>") for c in row}
                    assert got == row, (op, t, id)
                for t2, c in kept if drop_removed else ():
                    assert all(c not in r for r in after.get(t2, {}).values())
            assert_sound(db_path)
            spec, model = new_spec, expected
            if drop_removed:
                kept = set()
            spec_names = {e["name"] for e in spec["entities"]}
            if renamed_table:
                assert renamed_table[0] not in after
            assert spec_names <= set(after)

    check()
    print(sorted(outcomes.items()))
    assert outcomes  # steps did run


# -- removed entities, changed refs, renames that meet kept data -------------------

YARDS = {
    "slug": "yards",
    "name": "Yards",
    "entities": [
        {"name": "yard", "fields": [{"name": "name", "type": "string", "required": True}]},
        {"name": "barn", "fields": [{"name": "label", "type": "string", "required": True}]},
        {"name": "hive", "fields": [
            {"name": "name", "type": "string", "required": True},
            {"name": "yard", "type": "ref", "to": "yard", "on_delete": "cascade"},
        ]},
    ],
}


def yards_app(project):
    """The yards app migrated, with two accounts: Acme's yards 1-2 and hives h1 (yard 1)
    and h2 (yard 2); Evil's barns 1-3. Returns (app, data, db_path)."""
    write_spec(project, "yards", tomlkit.dumps(YARDS))
    generate(project, ["yards"])
    app, data = project.app_dir("yards"), project.app_dir("yards") / "instance"
    db_path = data / "yards.db"
    assert flask_migrate(app, data).returncode == 0
    db = open_db(db_path)
    db.executescript(
        """
        INSERT INTO account (id, name) VALUES (1, 'Acme'), (2, 'Evil');
        INSERT INTO yard (account_id, name, created_at, updated_at) VALUES (1, 'Y1', 't', 't'), (1, 'Y2', 't', 't');
        INSERT INTO hive (account_id, name, yard, created_at, updated_at) VALUES (1, 'h1', 1, 't', 't'), (1, 'h2', 2, 't', 't');
        INSERT INTO barn (account_id, label, created_at, updated_at) VALUES
          (2, 'EVIL SECRET BARN 1', 't', 't'), (2, 'EVIL SECRET BARN 2', 't', 't'), (2, 'EVIL SECRET BARN 3', 't', 't');
        """
    )
    db.commit()
    db.close()
    return app, data, db_path


def test_a_removed_entity_keeps_its_rows_when_live_records_are_deleted(project):
    app, data, db_path = yards_app(project)
    spec = copy.deepcopy(YARDS)
    spec["entities"] = [e for e in spec["entities"] if e["name"] != "hive"]
    regenerate(project, "yards", spec)
    result = flask_migrate(app, data)
    assert result.returncode == 0, result.stderr
    assert 'rebuilt kept table "hive" (2 rows) without its references to "yard"' in result.stdout
    assert 'table "hive" (2 rows) is no longer in the spec; its data is kept' in result.stdout
    db = open_db(db_path)  # foreign keys on, as in the app
    db.execute("DELETE FROM yard WHERE id = 1")  # what POST /yards/1/delete does
    db.commit()
    assert db.execute("SELECT name, yard FROM hive ORDER BY id").fetchall() == [("h1", 1), ("h2", 2)]
    db.close()
    assert_sound(db_path)
    # The backup migrate took first holds "hive" with its old references: it restores.
    backup = result.stdout.split("Backup taken before migrating: ")[1].split()[0]
    restored = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "restore", backup], cwd=app,
                              env=app_env(app, data), capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    assert 'rebuilt kept table "hive"' in restored.stdout
    db = open_db(db_path)
    assert db.execute("SELECT name FROM yard ORDER BY id").fetchall() == [("Y1",), ("Y2",)]
    assert db.execute("SELECT name, yard FROM hive ORDER BY id").fetchall() == [("h1", 1), ("h2", 2)]
    db.close()


@pytest.mark.slow
def test_a_ref_given_another_target_is_refused_and_never_shows_another_account(project):
    """hive.yard made a ref to barn: the stored ids are yards' and would show Evil's barns
    to Acme. Refused with the rows; with the values emptied first, it goes through."""
    app, data, db_path = yards_app(project)
    spec = copy.deepcopy(YARDS)
    next(f for f in spec["entities"][2]["fields"] if f["name"] == "yard")["to"] = "barn"
    regenerate_refused(project, "yards", spec,
                       '"hive"."yard" now refers to "barn" instead of "yard": its 2 values are ids of "yard" rows',
                       '"hive" id 1: "yard" = 1 is the id of a "yard" row, not of a "barn" row',
                       '"hive" id 2: "yard" = 2 is the id of a "yard" row, not of a "barn" row')

    db = open_db(db_path)
    db.execute("UPDATE hive SET yard = NULL")
    db.commit()
    db.close()
    regenerate(project, "yards", spec)
    result = flask_migrate(app, data)
    assert result.returncode == 0, result.stderr
    assert 'converted "yard" from ref to "yard" to ref to "barn"' in result.stdout
    assert_sound(db_path)


@pytest.mark.slow
def test_a_rename_onto_kept_data_is_refused_until_that_data_is_dropped(project):
    app, data, db_path = yards_app(project)
    spec = copy.deepcopy(YARDS)
    yard = spec["entities"][0]
    yard["fields"].append({"name": "code", "type": "string"})
    regenerate(project, "yards", spec)
    assert flask_migrate(app, data).returncode == 0
    db = open_db(db_path)
    db.execute("UPDATE yard SET code = 'stale ' || id")
    db.commit()
    db.close()
    yard["fields"].pop()  # "code" removed: kept with its data
    regenerate(project, "yards", spec)
    assert flask_migrate(app, data).returncode == 0

    yard["fields"][0].update(name="code", renamed_from="name")
    regenerate_refused(project, "yards", spec, '"yard"."name" cannot be renamed to "code" (renamed_from): the table '
                       'already has a column "code" that the spec no longer has, kept with its data.')

    # The app as it is drops the kept column; then the rename goes through.
    result = flask_migrate(app, data, "--drop-removed")
    assert result.returncode == 0, result.stderr
    regenerate(project, "yards", spec)
    result = flask_migrate(app, data)
    assert result.returncode == 0, result.stderr
    db = open_db(db_path)
    assert db.execute("SELECT code FROM yard ORDER BY id").fetchall() == [("Y1",), ("Y2",)]
    assert "name" not in [r[1] for r in db.execute('PRAGMA table_info("yard")')]
    db.close()
    assert_sound(db_path)


@pytest.mark.slow
def test_a_field_renamed_twice_between_migrations_is_refused(project):
    app, data, db_path = yards_app(project)
    spec = copy.deepcopy(YARDS)
    label = spec["entities"][1]["fields"][0]
    label.update(name="label2", renamed_from="label")
    regenerate(project, "yards", spec)
    label.update(name="label3", renamed_from="label2")  # no migrate in between
    regenerate_refused(project, "yards", spec, '"barn"."label3" is renamed_from "label2", but the table has no '
                       'column "label2" (nor "label3"); it has "label", which the spec no longer has.')
    label["renamed_from"] = "label"  # as the message says
    regenerate(project, "yards", spec)
    result = flask_migrate(app, data)
    assert result.returncode == 0, result.stderr
    assert 'renamed column "barn"."label" to "label3"' in result.stdout


@pytest.mark.slow
def test_the_backup_taken_before_an_entity_rename_restores(project):
    """It holds the table under its old name: restore renames it, as migrate did."""
    app, data, db_path = yards_app(project)
    spec = copy.deepcopy(YARDS)
    spec["entities"][1].update(name="shed", renamed_from="barn")
    regenerate(project, "yards", spec)
    result = flask_migrate(app, data)
    assert result.returncode == 0, result.stderr
    assert 'renamed table "barn" to "shed"' in result.stdout
    backup = result.stdout.split("Backup taken before migrating: ")[1].split()[0]
    db = open_db(db_path)
    db.execute("DELETE FROM shed")
    db.commit()
    db.close()
    restored = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "restore", backup], cwd=app,
                              env=app_env(app, data), capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    assert 'renamed table "barn" to "shed"' in restored.stdout
    db = open_db(db_path)
    assert [r[0] for r in db.execute("SELECT label FROM shed ORDER BY id")] == [
        "EVIL SECRET BARN 1", "EVIL SECRET BARN 2", "EVIL SECRET BARN 3"]
    db.close()


@pytest.mark.slow
def test_a_backup_older_than_an_entity_added_then_renamed_restores(project):
    """hive removed (kept), a backup, then "shelf" added (migrated) and renamed "rack":
    the backup has neither name because it is older than the entity, which restore
    creates empty; the kept "hive" has nothing to do with the rename."""
    app, data, db_path = yards_app(project)
    spec = copy.deepcopy(YARDS)
    spec["entities"] = [e for e in spec["entities"] if e["name"] != "hive"]
    regenerate(project, "yards", spec)
    assert flask_migrate(app, data).returncode == 0
    taken = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "backup"], cwd=app,
                           env=app_env(app, data), capture_output=True, text=True)
    assert taken.returncode == 0, taken.stderr
    backup = taken.stdout.split("Backup verified: ")[1].split(" (")[0]
    spec["entities"].append({"name": "shelf", "fields": [{"name": "code", "type": "string"}]})
    regenerate(project, "yards", spec)
    assert flask_migrate(app, data).returncode == 0
    spec["entities"][-1].update(name="rack", renamed_from="shelf")
    regenerate(project, "yards", spec)
    result = flask_migrate(app, data)
    assert 'renamed table "shelf" to "rack"' in result.stdout, result.stderr

    restored = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "restore", backup], cwd=app,
                              env=app_env(app, data), capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    assert 'created table "rack"' in restored.stdout
    db = open_db(db_path)
    assert db.execute("SELECT name, yard FROM hive ORDER BY id").fetchall() == [("h1", 1), ("h2", 2)]
    assert db.execute("SELECT count(*) FROM rack").fetchone()[0] == 0
    db.close()
    assert_sound(db_path)
