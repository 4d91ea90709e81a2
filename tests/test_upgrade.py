"""Upgrading the fleet keeps every record: the five examples generated with the template
as it was before teams and the audit trail, filled through their forms, regenerated
with today's template and migrated, hold every row they held, and work.

The old template comes from the repository's history (commit BEFORE_TEAMS).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tarfile
import io
from pathlib import Path

import pytest

from conftest import EXAMPLES, IGNORE, ROOT, app_env, generate, git, migrate
from generator.project import Project

pytestmark = pytest.mark.slow

# The last commit whose template had one user per account and no audit trail.
BEFORE_TEAMS = "b94a395"

FILL = """
import sys
sys.path[:0] = [".", "tests"]
from app import create_app
from conftest import TEST_CONFIG, AuthActions
import factories

app = create_app({**TEST_CONFIG, "DATA_DIR": sys.argv[1]})
for email, account in (("a@example.com", "A"), ("b@example.com", "B")):
    client = app.test_client()
    assert AuthActions(client).signup(email=email, account=account).status_code == 302
    factories.one_of_each(client)
    for name in factories.ROUTES:  # a second record where the entity takes one
        try:
            getattr(factories, "create_" + name)(client)
        except AssertionError:
            pass  # an entity whose unique fields allow one record
"""

USE = """
import re, sys
sys.path[:0] = [".", "tests"]
from app import create_app
from conftest import TEST_CONFIG, PASSWORD
import factories

app = create_app({**TEST_CONFIG, "DATA_DIR": sys.argv[1]})
client = app.test_client()
assert client.post("/login", data={"email": "a@example.com", "password": PASSWORD}).status_code == 302
assert "a@example.com (you)" in client.get("/team").text
for blueprint, url, _, _ in factories.ROUTES.values():
    page = client.get(url)
    assert page.status_code == 200 and re.search(r'data-id="\\d+"', page.text), url
assert client.get("/activity").status_code == 200
"""


def rows(db_path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table's columns and rows (in no particular order)."""
    conn = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        found = {}
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            found[table] = (columns, conn.execute(f'SELECT * FROM "{table}"').fetchall())
        return found
    finally:
        conn.close()


@pytest.fixture
def two_versions(tmp_path) -> Path:
    """A template repository whose HEAD~1 is BEFORE_TEAMS's tree and HEAD the working tree's."""
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_TEAMS}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"the repository's history (commit {BEFORE_TEAMS}) is not in this checkout")
    repo = tmp_path / "vgen"
    repo.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_TEAMS], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(repo, filter="data")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "before teams")
    git(repo, "rm", "-rq", ".")
    shutil.copytree(ROOT, repo, dirs_exist_ok=True, ignore=IGNORE)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "teams, audit trail, import")
    return repo


def test_the_examples_keep_every_record_through_the_upgrade(two_versions, tmp_path):
    root = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", "--local", str(two_versions), str(root)], check=True)
    git(root, "checkout", "-q", "HEAD~1")
    project = Project(root, out=tmp_path / "apps")
    outcomes = generate(project, EXAMPLES)
    assert [o.status for o in outcomes.values()] == ["created"] * len(EXAMPLES), outcomes
    before = {}
    for slug in EXAMPLES:
        app, data = project.app_dir(slug), tmp_path / f"data-{slug}"
        migrate(app, data)
        subprocess.run([sys.executable, "-c", FILL, str(data)], cwd=app, env=app_env(app, data), check=True,
                       capture_output=True, text=True)
        before[slug] = rows(data / f"{slug}.db")
        assert "app_audit" not in before[slug]

    git(root, "checkout", "-q", "main")
    outcomes = generate(project, EXAMPLES)
    assert [o.status for o in outcomes.values()] == ["updated"] * len(EXAMPLES), outcomes
    for slug in EXAMPLES:
        app, data = project.app_dir(slug), tmp_path / f"data-{slug}"
        assert (app / "app" / "team.py").exists()
        migrate(app, data)
        after = rows(data / f"{slug}.db")
        for table, (columns, old_rows) in before[slug].items():
            if table == "app_migration":
                continue
            new_columns, new_rows = after[table]
            kept = [tuple(row[new_columns.index(c)] for c in columns) for row in new_rows]
            assert sorted(kept, key=repr) == sorted(old_rows, key=repr), f"{slug}: {table}"
        roles = [row[after["user"][0].index("role")] for row in after["user"][1]]
        assert roles == ["owner", "owner"], slug
        result = subprocess.run([sys.executable, "-c", USE, str(data)], cwd=app, env=app_env(app, data),
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{slug}: {result.stderr[-3000:]}"
