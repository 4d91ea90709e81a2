"""The only module that calls copier: render a new app, or update an existing one.

Copier changes the working directory while it runs, so callers run these functions in
worker processes (see fleet.py), never in threads.
"""

from __future__ import annotations

import io
import contextlib
from pathlib import Path

import copier

from .errors import VgenError
from .gitrepo import git


def template_commit(root: Path) -> str:
    """The full HEAD commit of the template repository: the version apps record."""
    commit = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    if not commit:
        raise VgenError(f"{root}: the template repository has no commit yet: commit template/ and copier.yml first")
    return commit


def template_version(root: Path, commit: str) -> str:
    """A readable name for the template version: a tag if one points there, else a short hash."""
    described = git(root, "describe", "--tags", "--always", commit, check=False).strip()
    return described or commit[:12]


def uncommitted_template_changes(root: Path) -> list[str]:
    """Template files changed but not committed: copier renders only committed content."""
    out = git(root, "status", "--porcelain", "--", "template", "copier.yml", check=False)
    return [line[3:] for line in out.splitlines() if line.strip()]


def copy(root: Path, commit: str, answers: dict, dest: Path) -> None:
    """Render a new app from the template at `commit` into dest."""
    with _quiet():
        copier.run_copy(
            str(root), dest, data=answers, vcs_ref=commit, defaults=True,
            overwrite=True, unsafe=True, quiet=True, skip_tasks=True,
        )


def update(commit: str, answers: dict, dest: Path) -> None:
    """Update an existing app (a clean git repository) to `commit` with new answers.

    Copier's three-way merge keeps hand edits; conflicts are left inline, for the caller
    to find (copier exits normally even when it leaves some).
    """
    with _quiet():
        copier.run_update(
            dest, data=answers, vcs_ref=commit, defaults=True, overwrite=True,
            unsafe=True, quiet=True, skip_tasks=True, conflict="inline",
        )


@contextlib.contextmanager
def _quiet():
    """Keep copier's own chatter off the terminal; vgen reports the outcome itself."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
