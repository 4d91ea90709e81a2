"""The schema plan of an app: what `flask --app app migrate` would do to its database.

`vgen generate --dry-run` shows it beside the file changes. The app's own
`migrate --dry-run` computes it (vgen never reads an app's schema itself), run against a
scratch copy of the database, so the live database is only read (and no secret_key file
is created in its data folder).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import VgenError

TIMEOUT = 300  # seconds; a dry run copies the database once


@dataclass(frozen=True)
class Plan:
    """What `flask --app app migrate` would do to a database, in migrate's own words."""

    text: str  # the output of migrate --dry-run
    refused: bool  # the data cannot take the new schema: text lists the rows and why


def schema_plan(app_dir: Path, data_dir: Path | None = None, python: str = sys.executable) -> str:
    """The output of `flask --app app migrate --dry-run` for the app's database."""
    return plan(app_dir, data_dir, python).text


def has_database(data_dir: Path) -> bool:
    """True when data_dir holds an app database: customers' data a new schema must fit."""
    return Path(data_dir).is_dir() and any(Path(data_dir).glob("*.db"))


def plan(app_dir: Path, data_dir: Path | None = None, python: str = sys.executable) -> Plan:
    """Run `flask --app app migrate --dry-run` for the app's database.

    app_dir is the app whose code (schema.sql, migrate.py) to run: for `vgen generate`,
    the newly rendered app. data_dir holds the database (default app_dir/instance); a
    missing database gives the plan for a new one. A migration the data would refuse is
    a plan too (refused): its message lists the rows. Raises VgenError when migrate
    cannot run at all.
    """
    app_dir = Path(app_dir)
    data_dir = Path(data_dir) if data_dir is not None else app_dir / "instance"
    with tempfile.TemporaryDirectory(prefix="vgen-schema-plan-") as scratch:
        for db in sorted(data_dir.glob("*.db")) if data_dir.is_dir() else []:
            copy_database(db, Path(scratch) / db.name)
        env = dict(os.environ, DATA_DIR=scratch, SECRET_KEY="schema-plan-only")
        env.pop("PYTHONPATH", None)
        try:
            done = subprocess.run(
                [python, "-m", "flask", "--app", "app", "migrate", "--dry-run"],
                cwd=app_dir, env=env, capture_output=True, text=True, timeout=TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VgenError(f"{app_dir}: could not run migrate --dry-run ({e})") from e
        output = (done.stdout + done.stderr).replace(scratch, str(data_dir)).strip()
    refused = done.returncode != 0
    if refused and "migration refused" not in output:
        if lacks_app_packages(python):
            raise VgenError(f"{app_dir}: no schema plan: migrate --dry-run runs the app with vgen's own Python "
                            f"({python}), which does not have the app's dependencies. Install them into it, "
                            "as scripts/install does (they are listed in the app's pyproject.toml)")
        raise VgenError(f"{app_dir}: migrate --dry-run failed:\n{output}")
    return Plan(output, refused)


def lacks_app_packages(python: str) -> bool:
    """True when `python` cannot import what a generated app runs on: vgen installed on
    its own (pip install .) has not the apps' packages."""
    return subprocess.run([python, "-c", "import flask, gunicorn"], capture_output=True).returncode != 0


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API, opening the source read-only."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
