"""`vgen drill`: prove that each vertical's latest off-site copy would restore.

For each vertical: list its off-site folder (BACKUP_OFFSITE in /etc/vgen/<slug>.env, or
the folder its last good off-site copy went to), fetch the newest backup there with
rclone into a scratch folder, and check it. rclone's config: RCLONE_CONFIG (or any
RCLONE_* setting) from that file, else from vgen's environment, else
/etc/vgen/rclone.conf, the one the backup units get. The checks:

- its checksum equals the one the remote keeps, and the one the backup recorded when it
  uploaded it (backups/last.json);
- `PRAGMA integrity_check` says ok;
- its row count per table equals the one recorded at backup time;
- it has every table and column of the app's schema (a fresh database made by the app's
  own `flask --app app migrate`). More is fine: migrate keeps the data of fields and
  entities that left the spec.

Nothing live is touched: the copy, and the fresh database, live in temporary folders
that are removed afterwards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import status
from .alarms import age
from .project import Project

TIMEOUT = 3600  # seconds, for each rclone command
# rclone's names of the hashes a remote may keep -> hashlib's, best first (as
# template/app/backup.py compares them after an upload).
HASHES = {"sha256": "sha256", "sha1": "sha1", "md5": "md5"}
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def backup_name_re(slug: str) -> re.Pattern:
    """The names `flask --app app backup` gives its backups (backup.py: unique_name)."""
    return re.compile(rf"^{re.escape(slug)}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?\.db$")


@dataclass
class Result:
    slug: str
    verified: bool = False
    problems: list[str] = field(default_factory=list)  # why it is not verified
    remote: str = ""  # the copy drilled: remote:folder/name
    taken: dt.datetime | None = None  # when the backup was taken (its name says)
    size: int | None = None
    tables: dict[str, int] = field(default_factory=dict)

    def line(self, now: dt.datetime | None = None) -> str:
        """One line for the report: the slug first."""
        now = now or dt.datetime.now(dt.timezone.utc)
        parts = []
        if self.remote:
            parts.append(self.remote)
        if self.taken:
            parts.append(f"{age(now - self.taken)} old")
        if self.size is not None:
            parts.append(f"{self.size} bytes")
        if self.verified:
            rows = sum(self.tables.values())
            parts.append(f"{rows} row{'s' if rows != 1 else ''} in {len(self.tables)} tables as recorded")
            return f"{self.slug}: verified: " + ", ".join(parts)
        shown = ", ".join(parts)
        return f"{self.slug}: FAILED: " + (f"{shown}: " if shown else "") + "; ".join(self.problems)


def drill(project: Project | None, slugs: list[str] | None, root: Path = Path("/"),
          python: str = sys.executable) -> list[Result]:
    """Drill each vertical (slugs; None: every one status.deployed finds)."""
    apps = status.deployed(project, root)
    chosen = list(apps) if slugs is None else slugs
    results = []
    schemas: dict[Path, dict] = {}
    for slug in chosen:
        app = apps.get(slug)
        if app is None:
            results.append(Result(slug, problems=["no generated or installed app of that name"]))
            continue
        results.append(drill_one(slug, app, root, python, schemas))
    return results


def drill_one(slug: str, app: Path, root: Path, python: str, schemas: dict) -> Result:
    result = Result(slug)
    record = status.last_record(app, slug, root)
    settings = status.settings(slug, root)
    recorded = record.get("last_offsite") or {}
    folder = settings.get("BACKUP_OFFSITE", "").rstrip("/")
    if not folder and recorded.get("remote"):
        folder = recorded["remote"].rsplit("/", 1)[0]
    if not folder:
        result.problems.append(f"no off-site copy to drill: BACKUP_OFFSITE is not set in {Path(root) / 'etc/vgen' / (slug + '.env')}"
                               " and no backup recorded one")
        return result
    env = dict(os.environ)
    fleet_config = Path(root) / "etc/vgen/rclone.conf"  # the backup units' credential
    if not env.get("RCLONE_CONFIG") and fleet_config.is_file():
        env["RCLONE_CONFIG"] = str(fleet_config)
    env.update({k: v for k, v in settings.items() if k.startswith("RCLONE_")})
    try:
        listing = json.loads(rclone(env, "lsjson", "--hash", "--files-only", folder) or "[]")
    except (RuntimeError, ValueError) as e:
        result.problems.append(f"cannot list {folder}: {e}")
        return result
    pattern = backup_name_re(slug)
    copies = []
    for item in listing:
        match = pattern.match(item.get("Name", ""))
        if match:
            copies.append(((match.group(1), int(match.group(2) or 0)), item))
    if not copies:
        result.problems.append(f"no backup of {slug} in {folder}")
        return result
    (stamp, _), item = max(copies, key=lambda c: c[0])
    result.remote = f"{folder}/{item['Name']}"
    result.taken = dt.datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=dt.timezone.utc)
    result.size = item.get("Size")
    with tempfile.TemporaryDirectory(prefix="vgen-drill-") as scratch:
        copy = Path(scratch) / item["Name"]
        try:
            rclone(env, "copyto", result.remote, str(copy))
        except RuntimeError as e:
            result.problems.append(f"cannot fetch it: {e}")
            return result
        result.problems += checksum_problems(copy, item.get("Hashes") or {}, recorded, result.remote)
        try:
            result.tables, columns = read_copy(copy)
        except (sqlite3.Error, ValueError) as e:
            result.problems.append(str(e))
            return result
        if recorded.get("remote") != result.remote:
            result.problems.append(f"no row counts recorded for it (the last off-site copy recorded is {recorded.get('remote') or 'none'})")
        elif recorded.get("tables") != result.tables:
            result.problems.append(f"row counts differ from the ones recorded at backup time: {differences(recorded.get('tables') or {}, result.tables)}")
        if app not in schemas:
            schemas[app] = app_schema(app, python)
        result.problems += schema_problems(schemas[app], columns)
    result.verified = not result.problems
    return result


def checksum_problems(copy: Path, hashes: dict, recorded: dict, remote: str) -> list[str]:
    problems = []
    for kind in HASHES:
        if hashes.get(kind):
            got = file_hash(copy, kind)
            if got != hashes[kind].lower():
                problems.append(f"the fetched copy's {kind} {got} differs from the remote's {hashes[kind]}")
            break
    checksum = recorded.get("checksum") or ""
    if recorded.get("remote") == remote and ":" in checksum:
        kind, value = checksum.split(":", 1)
        if kind in HASHES and file_hash(copy, kind) != value:
            problems.append(f"its {kind} differs from the one recorded at backup time ({value})")
    return problems


def file_hash(path: Path, kind: str) -> str:
    digest = hashlib.new(HASHES[kind])
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_copy(path: Path) -> tuple[dict[str, int], dict[str, set[str]]]:
    """(rows per table, columns per table) of the SQLite database at path, read-only,
    once `PRAGMA integrity_check` says ok; ValueError says what is wrong otherwise."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise ValueError(f"integrity_check fails: {'; '.join(problems[:5])}")
            columns = table_columns(db)
            counts = {name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in columns}
            return counts, columns
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"not a readable SQLite database ({e})") from e


def table_columns(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [row[0] for row in db.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: {row[1] for row in db.execute(f'PRAGMA table_info("{name}")')} for name in names}


def app_schema(app: Path, python: str) -> dict[str, set[str]] | str:
    """The tables and columns of a fresh database made by the app's own migrate, in a
    scratch folder; a string saying why when migrate cannot run."""
    venv_python = Path(app) / ".venv/bin/python"
    if venv_python.exists():
        python = str(venv_python)  # an installed release runs with its own venv
    with tempfile.TemporaryDirectory(prefix="vgen-drill-schema-") as scratch:
        env = dict(os.environ, DATA_DIR=scratch, SECRET_KEY="drill-only")
        env.pop("PYTHONPATH", None)
        try:
            done = subprocess.run([python, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env,
                                  capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot make the app's schema with {python}: {e}"
        databases = list(Path(scratch).glob("*.db"))
        if done.returncode != 0 or len(databases) != 1:
            return f"cannot make the app's schema: migrate says {(done.stderr or done.stdout).strip()[-300:]}"
        db = sqlite3.connect(databases[0])
        try:
            return table_columns(db)
        finally:
            db.close()


def schema_problems(schema: dict[str, set[str]] | str, columns: dict[str, set[str]]) -> list[str]:
    if isinstance(schema, str):
        return [schema]
    problems = []
    missing = sorted(set(schema) - set(columns))
    if missing:
        problems.append(f"the app's tables {', '.join(missing)} are missing")
    for table in sorted(set(schema) & set(columns)):
        lacking = sorted(schema[table] - columns[table])
        if lacking:
            problems.append(f'table "{table}" lacks the app\'s columns {", ".join(lacking)}')
    return problems


def differences(recorded: dict[str, int], found: dict[str, int]) -> str:
    tables = sorted(set(recorded) | set(found))
    return ", ".join(f"{t} {recorded.get(t, 'none')} recorded, {found.get(t, 'none')} found"
                     for t in tables if recorded.get(t) != found.get(t))


def rclone(env: dict, *args: str) -> str:
    """`rclone ARGS` with env; its output. RuntimeError with rclone's last words when it fails."""
    try:
        done = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"rclone {args[0]}: {e}") from e
    if done.returncode != 0:
        said = [line for line in done.stderr.strip().splitlines() if line.strip()][-2:]
        raise RuntimeError(f"rclone {args[0]} exited with {done.returncode}: {' / '.join(said) or 'no output'}")
    return done.stdout
