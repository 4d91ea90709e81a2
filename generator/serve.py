"""`vgen serve`: run one generated app locally, as its systemd unit would.

prepare() does what must happen before serving (migrate the database, as the unit's
ExecStartPre does) and returns the command; the CLI replaces itself with it, so that
Ctrl-C and signals reach gunicorn directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import ports, schema
from .appupdate import data_dir
from .errors import VgenError
from .project import Project


@dataclass(frozen=True)
class Command:
    """A process to run: its arguments, folder and environment."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    port: int | None  # where it listens, from ports.toml


def prepare(project: Project, slug: str, python: str = sys.executable) -> Command:
    """Migrate the app's database (created when missing), then return gunicorn's command.

    Raises VgenError when there is no generated app, or when migrate refuses: the app
    would not start on its database.
    """
    app = project.app_dir(slug)
    if not (app / "gunicorn.conf.py").is_file():
        raise VgenError(f"{app} is not a generated app: run vgen generate {slug} first")
    registry = ports.load(project.ports_path)
    env = dict(os.environ)
    env.setdefault("DATA_DIR", str(data_dir(app)))
    migrate = subprocess.run([python, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env)
    if migrate.returncode != 0:
        if schema.lacks_app_packages(python):
            raise VgenError(f"{slug}: the app's dependencies are not installed for {python}: install "
                            f"those listed in {app / 'pyproject.toml'} (scripts/install does), then serve again")
        raise VgenError(f"{slug}: flask --app app migrate failed; the app was not started")
    return Command([python, "-m", "gunicorn", "-c", "gunicorn.conf.py"], app, env, registry.ports.get(slug))
