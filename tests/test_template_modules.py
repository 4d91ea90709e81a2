"""The app's machinery is plain Python in template/app/ (migrate, backup, db, auth...):
the same file in every app, so it is linted here as ordinary code, once.

Copier copies files without the .jinja suffix as they are; the per-app data they read
(app/spec.json) is rendered from the spec.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT

PLAIN = sorted(p for d in ("template/app", "template/tests") for p in (ROOT / d).glob("*.py"))


def test_the_machinery_is_plain_python():
    names = {p.name for p in PLAIN}
    assert {"migrate.py", "backup.py", "spec.py", "db.py", "auth.py"} <= names
    for path in PLAIN:
        assert "[[" not in path.read_text(encoding="utf-8"), f"{path} holds copier markup but is no .jinja file"


def test_the_plain_modules_pass_pyflakes_checks():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(ROOT / ".venv" / "bin"))
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    done = subprocess.run([*command, "check", "--no-cache", "--select", "F,E9", *map(str, PLAIN)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
