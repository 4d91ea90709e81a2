"""From a spec to a running app: generation, the app's own tests, serving, updates."""

from __future__ import annotations

import filecmp
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from generator import cli, ports

from conftest import (
    EXAMPLES,
    ROOT, generate, gunicorn, migrate, port_is_free, port_of, run_app_tests, wait_for, wait_port_free, write_spec,
)


# Every field type and option, and names that are SQL, Python or Jinja keywords.
EVERYTHING = '''
slug = "everything"
name = "Everything & <Co>"
tagline = "Every field type, and keywords as names"
domain = "everything.example.com"

[[entities]]
name = "order"
search = ["from", "select", "email"]
list = ["from", "group", "class", "price", "when"]
fields = [
  { name = "from", type = "string", required = true, unique = true, max_length = 40 },
  { name = "group", type = "choice", choices = ["a", "b", "c d"], default = "a" },
  { name = "class", type = "integer", min = -5, max = 500, default = 1 },
  { name = "price", type = "decimal", places = 2, min = 0, max = 99999, default = 12.30, required = true },
  { name = "select", type = "text", help = "Free <b>text</b>" },
  { name = "in", type = "boolean", default = true },
  { name = "when", type = "date", default = 2024-01-31 },
  { name = "at", type = "datetime" },
  { name = "email", type = "email", unique = true },
  { name = "url", type = "url" },
  { name = "parent", type = "ref", to = "order", on_delete = "cascade" },
  { name = "table", type = "ref", to = "table", on_delete = "set_null" },
  { name = "data", type = "string", max_length = 5 },
  { name = "none", type = "integer" },
  { name = "loop", type = "string" },
  { name = "self", type = "string" },
  { name = "items", type = "string" },
  { name = "keys", type = "string" },
]

[[entities]]
name = "table"
title_field = "not"
fields = [
  { name = "not", type = "string", required = true },
  { name = "true", type = "decimal", places = 0 },
]

[[entities]]
name = "class"
plural = "classes"
fields = [
  { name = "group", type = "ref", to = "table", required = true, on_delete = "restrict" },
  { name = "where", type = "datetime", required = true },
]

[[entities]]
name = "session"
fields = [{ name = "title", type = "string" }]
'''

SMALL = '''
slug = "{slug}"
name = "{name}"

[[entities]]
name = "note"
fields = [
  {{ name = "title", type = "string", required = true }},
  {{ name = "amount", type = "decimal", places = 2 }},
]
'''


def test_cli_new_writes_spec_assigns_port_and_generates(project, monkeypatch):
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "new", "bakery",
                                           "--name", "Bakery", "--out", str(project.out)])
    assert result.exit_code == 0, result.output
    assert "Wrote verticals/bakery.toml" in result.output
    port = port_of(project, "bakery")
    assert f"Assigned port {port} to bakery in ports.toml" in result.output
    assert "created" in result.output
    app = project.app_dir("bakery")
    assert (app / "app" / "__init__.py").is_file()
    assert f"127.0.0.1:{port}" in (app / "gunicorn.conf.py").read_text()
    log = subprocess.run(["git", "log", "--format=%s"], cwd=app, capture_output=True, text=True).stdout
    assert log.startswith("Generate bakery from template ")
    # A second `new` of the same slug is refused, and nothing changes.
    again = CliRunner().invoke(cli.main, ["--project", str(project.root), "new", "bakery"])
    assert again.exit_code == 1
    assert "verticals/bakery.toml already exists" in again.output


@pytest.mark.parametrize("slug", ["Bad-Slug", "x", "a" * 40])
def test_cli_new_refuses_a_bad_slug(project, slug):
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "new", slug])
    assert result.exit_code == 1
    assert "must match ^[a-z][a-z0-9]{1,30}$" in result.output
    assert not project.spec_path(slug).exists()
    assert "Traceback" not in result.output


def test_cli_check_lists_every_problem(project):
    write_spec(project, "broken", '''slug = "broken"\nname = "B"\n[[entities]]\nname = "x"\nfields = [{ name = "a", type = "string", requried = true }]\n''')
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "check"])
    assert result.exit_code == 1
    assert 'verticals/broken.toml: entity "x", field "a": unknown key "requried"' in result.output
    assert 'ports.toml: vertical "broken" has no port' in result.output


@pytest.mark.slow
@pytest.mark.parametrize("slug", EXAMPLES + ["everything", "edgy"])
def test_generated_app_passes_its_own_tests(project, slug):
    if slug == "everything":
        write_spec(project, slug, EVERYTHING)
    elif slug == "edgy":
        write_spec(project, slug, (Path(__file__).parent / "fixtures" / "edgy.toml").read_text())
    outcome = generate(project, [slug])[slug]
    assert outcome.status == "created", outcome.message
    result = run_app_tests(project.app_dir(slug))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("slug", ["email", "json", "site", "test"])
def test_slugs_that_are_python_modules_generate_working_apps(project, slug):
    write_spec(project, slug, SMALL.format(slug=slug, name=slug.title()))
    assert generate(project, [slug])[slug].status == "created"
    app = project.app_dir(slug)
    port = port_of(project, slug)
    assert port_is_free(port)
    with gunicorn(app):
        status, body = wait_for(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    if slug == "test":
        result = run_app_tests(app)
        assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.slow
@pytest.mark.xdist_group("example-ports")
def test_scripts_run_serves_every_example_on_its_registered_port(tmp_path):
    """The README's main command: install, generate the examples, serve each on its port."""
    registry = ports.load(ROOT / "ports.toml")
    for slug in EXAMPLES:
        wait_port_free(registry.ports[slug])
    env = dict(os.environ, VGEN_OUT=str(tmp_path / "apps"))
    result = subprocess.run([str(ROOT / "scripts" / "run"), "--check"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for slug in EXAMPLES:
        assert f"{slug:16} http://127.0.0.1:{registry.ports[slug]}/healthz  200" in result.stdout
    assert registry.ports["cheesemaking"] == 8317  # committed: a port never moves
    for slug in EXAMPLES:  # scripts/run stopped what it started
        assert port_is_free(registry.ports[slug])


def test_decimal_and_every_type_round_trip_through_the_schema(project):
    write_spec(project, "everything", EVERYTHING)
    generate(project, ["everything"])
    app = project.app_dir("everything")
    data = app / "instance"
    migrate(app, data)
    db = sqlite3.connect(data / "everything.db")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("INSERT INTO account (id, name) VALUES (1, 'acme')")
    now = "'2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z'"
    db.execute(f'INSERT INTO "table" (account_id, "not", "true", created_at, updated_at) VALUES (1, \'t\', 7, {now})')
    db.execute(
        'INSERT INTO "order" (account_id, "from", "group", "class", price, "select", "in", "when", at,'
        ' email, url, "table", data, created_at, updated_at) VALUES (1, \'x\', \'c d\', -5, 1230, \'<script>\', 1,'
        f" '2024-02-29', '2024-02-29T23:59:00', 'a@b.co', 'https://x.example', 1, 'abcde', {now})"
    )
    db.commit()
    row = db.execute('SELECT "from", "group", "class", price, "select", "in", "when", at, email, url, "table", data FROM "order"').fetchone()
    assert row == ("x", "c d", -5, 1230, "<script>", 1, "2024-02-29", "2024-02-29T23:59:00", "a@b.co", "https://x.example", 1, "abcde")
    # The constraints are real: each of these is refused by SQLite itself.
    bad = [
        ('price', '100'),  # "from" NOT NULL
        ('"from", price', "'x', 100"),  # unique per account
        ('"from", price, "group"', "'y', 100, 'z'"),  # choice
        ('"from", price, "class"', "'y', 100, 501"),  # max
        ('"from", price', "'y', -1"),  # min
        ('"from", price, data', "'y', 1, 'abcdef'"),  # max_length
        ('"from", price, "when"', "'y', 1, '2024-02-30'"),  # a date that does not exist
        ('"from", price, "table"', "'y', 1, 99"),  # FK
        ('"from", price, "class"', "'y', 1, 'many'"),  # type (STRICT)
    ]
    for columns, values in bad:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(f'INSERT INTO "order" (account_id, {columns}, created_at, updated_at) VALUES (1, {values}, {now})')
    # The same unique value is fine in another account.
    db.execute("INSERT INTO account (id, name) VALUES (2, 'other')")
    db.execute(f'INSERT INTO "order" (account_id, "from", price, created_at, updated_at) VALUES (2, \'x\', 1, {now})')
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.slow
def test_plain_copier_copy_of_the_repository_gives_the_same_app(project, tmp_path):
    assert generate(project, ["cheesemaking"])["cheesemaking"].status == "created"
    app = project.app_dir("cheesemaking")
    answers = yaml.safe_load((app / ".copier-answers.yml").read_text())
    assert Path(answers["_src_path"]).resolve() == project.root.resolve()
    data = tmp_path / "answers.yml"
    data.write_text(yaml.safe_dump({k: v for k, v in answers.items() if not k.startswith("_")}))
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet", "--vcs-ref", answers["_commit"],
                    "--data-file", str(data), str(project.root), str(plain)], check=True, capture_output=True)
    cmp = filecmp.dircmp(app, plain, ignore=[".git"])
    assert _differences(cmp) == []
    # And copier update works on it later, from the app's own folder.
    subprocess.run(["git", "init", "-q"], cwd=plain, check=True)
    subprocess.run(["git", "add", "-A"], cwd=plain, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=plain, check=True)
    result = subprocess.run([sys.executable, "-m", "copier", "update", "--trust", "--defaults", "--quiet"], cwd=plain, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _differences(cmp) -> list[str]:
    found = [f"{cmp.left}/{n}" for n in cmp.left_only + cmp.right_only + cmp.diff_files]
    for sub in cmp.subdirs.values():
        found += _differences(sub)
    return found


def test_regeneration_keeps_hand_edits_and_reports_the_outcome(project):
    assert generate(project, ["honeybees"])["honeybees"].status == "created"
    app = project.app_dir("honeybees")
    readme = app / "README.md"
    readme.write_text(readme.read_text() + "\nHand-written note: hives are moved in March.\n")
    custom = app / "app" / "custom.py"
    custom.write_text(custom.read_text() + "\n# the founder's own code\n")
    spec_path = project.spec_path("honeybees")
    spec_path.write_text(spec_path.read_text().replace(
        'tagline = "Hive records for hobby and sideline beekeepers"', 'tagline = "Hive records, now with a new tagline"'))
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "generate", "honeybees", "--out", str(project.out)])
    assert result.exit_code == 0, result.output
    assert "updated" in result.output
    assert "Hand-written note: hives are moved in March." in readme.read_text()
    assert "# the founder's own code" in custom.read_text()
    assert "Hive records, now with a new tagline" in (app / ".copier-answers.yml").read_text()
    log = subprocess.run(["git", "log", "--format=%s"], cwd=app, capture_output=True, text=True).stdout.splitlines()
    assert log[0].startswith("Regenerate honeybees from template ")
    assert log[1] == "Hand edits, committed by vgen before regeneration"
    # Nothing changed since: the next run leaves the app alone.
    again = CliRunner().invoke(cli.main, ["--project", str(project.root), "generate", "honeybees", "--out", str(project.out)])
    assert again.exit_code == 0 and "unchanged" in again.output


def test_a_broken_spec_fails_its_vertical_and_the_others_go_on(project):
    write_spec(project, "broken", 'slug = "broken"\nname = "B"\n')
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "generate", "--all", "--out", str(project.out)])
    assert result.exit_code == 1
    assert "broken" in result.output and "failed" in result.output
    assert "invalid spec: at least one [[entities]] is required" in result.output
    assert all(project.app_dir(s).is_dir() for s in EXAMPLES)
    assert not project.app_dir("broken").exists()


@pytest.mark.slow
def test_app_installs_in_its_own_venv_and_serves(project, tmp_path):
    assert generate(project, ["shiftfill"])["shiftfill"].status == "created"
    app = project.app_dir("shiftfill")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{app}[test]"],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    tests = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"], cwd=app,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout[-3000:]
    port = port_of(project, "shiftfill")
    with gunicorn(app, python=python):
        status, body = wait_for(f"http://127.0.0.1:{port}/healthz")
    assert status == 200
