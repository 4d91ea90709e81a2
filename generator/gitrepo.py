"""The generated apps' own git repositories: one per app, one commit per regeneration."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import VgenError

# Used only when git has no identity configured (a fresh CI machine, a new box).
IDENTITY = ["-c", "user.name=vgen", "-c", "user.email=vgen@localhost"]


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in repo and return its standard output."""
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True,
    )
    if check and result.returncode != 0:
        raise VgenError(f"{repo}: git {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _identity(repo: Path) -> list[str]:
    has_email = git(repo, "config", "user.email", check=False).strip()
    return [] if has_email else IDENTITY


def is_repo(path: Path) -> bool:
    return (Path(path) / ".git").exists()


def init(repo: Path) -> None:
    git(repo, "init", "-q", "-b", "main")


def is_clean(repo: Path) -> bool:
    return not git(repo, "status", "--porcelain").strip()


def commit_all(repo: Path, message: str) -> bool:
    """Stage everything git does not ignore and commit it; False when nothing changed."""
    git(repo, "add", "-A")
    if not git(repo, "status", "--porcelain").strip():
        return False
    git(repo, *_identity(repo), "commit", "-q", "--no-verify", "-m", message)
    return True


def head(repo: Path) -> str | None:
    out = git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    return out or None


def changed_files(repo: Path, since: str) -> list[str]:
    """Files that differ between commit `since` and the working tree (untracked included)."""
    git(repo, "add", "-A", "--intent-to-add")
    out = git(repo, "diff", "--name-only", since)
    return sorted(line for line in out.splitlines() if line)


def conflicts(repo: Path, files: list[str]) -> list[str]:
    """Files left in conflict: unmerged paths, .rej files, or inline conflict markers."""
    found = set(line.split("\t", 1)[1] for line in git(repo, "ls-files", "-u").splitlines() if "\t" in line)
    for name in files:
        path = Path(repo) / name
        if name.endswith(".rej"):
            found.add(name)
        elif path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if "\n<<<<<<< " in "\n" + text and "\n>>>>>>> " in text:
                found.add(name)
    return sorted(found)


def save_aside_and_reset(repo: Path, before: str, branch: str, message: str) -> None:
    """Commit the working tree on `branch`, then put the app back exactly at `before`.

    Ignored files (the app's data in instance/) are never touched: no `git clean -x`.
    """
    git(repo, "checkout", "-q", "-B", branch)
    git(repo, "add", "-A")
    git(repo, *_identity(repo), "commit", "-q", "--no-verify", "--allow-empty", "-m", message)
    git(repo, "checkout", "-q", "-f", "main")
    git(repo, "reset", "-q", "--hard", before)
    git(repo, "clean", "-q", "-fd")
