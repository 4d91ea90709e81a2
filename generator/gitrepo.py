"""The generated apps' own git repositories: one per app, one commit per regeneration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import VgenError

# The app repository's branches vgen keeps: exactly what the template rendered each time
# (no hand edits), and the would-be result of a regeneration that was not kept.
TEMPLATE_BRANCH = "vgen/template"
CONFLICT_BRANCH = "vgen/conflict"
REFUSED_BRANCH = "vgen/refused"

# Used only when git has no identity configured (a fresh CI machine, a new box).
IDENTITY = ["-c", "user.name=vgen", "-c", "user.email=vgen@localhost"]


def git(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run git in repo and return its standard output."""
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, env=env,
    )
    if check and result.returncode != 0:
        raise VgenError(f"{repo}: git {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _identity(repo: Path) -> list[str]:
    has_email = git(repo, "config", "user.email", check=False).strip()
    return [] if has_email else IDENTITY


def is_repo(path: Path) -> bool:
    return (Path(path) / ".git").exists()


def check_repo(repo: Path) -> None:
    """Raise VgenError, in git's own words, when repo/.git is not a repository git can
    use (a missing HEAD, say). Checked with GIT_DIR set, so that git never takes a
    repository around the app (the project's, when apps/ is inside it) for the app's."""
    result = subprocess.run(
        ["git", "rev-parse", "--git-dir"], cwd=repo, capture_output=True, text=True,
        env=dict(os.environ, GIT_DIR=str(Path(repo) / ".git")),
    )
    if result.returncode != 0:
        said = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise VgenError(f"{repo}: its git repository is damaged (git: {said}); vgen will not update it: "
                        f"repair {Path(repo) / '.git'}, or move the app away, generate it anew "
                        "and bring back its instance/ data and your hand edits")


def init(repo: Path) -> None:
    git(repo, "init", "-q", "-b", "main")


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


def unmerged(repo: Path) -> list[str]:
    """Paths the last merge left unmerged. Read them before changed_files(), whose
    `git add` marks them resolved (a modify/delete conflict then leaves no trace)."""
    return sorted(set(line.split("\t", 1)[1] for line in git(repo, "ls-files", "-u").splitlines() if "\t" in line))


def conflicts(repo: Path, files: list[str], unmerged_paths: list[str]) -> list[str]:
    """Files left in conflict: unmerged paths, .rej files, or inline conflict markers."""
    found = set(unmerged_paths)
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


def save_aside(repo: Path, branch: str, message: str, also_parent: str | None = None) -> None:
    """Commit the working tree as it is (conflict markers included) onto `branch`
    without moving the current branch; with also_parent, as a merge of that too."""
    git(repo, "add", "-A")
    tree = git(repo, "write-tree").strip()
    parents = ["-p", git(repo, "rev-parse", "HEAD").strip()]
    if also_parent:
        parents += ["-p", git(repo, "rev-parse", also_parent).strip()]
    commit = git(repo, *_identity(repo), "commit-tree", tree, *parents, "-m", message).strip()
    git(repo, "branch", "-f", branch, commit)


def branch_exists(repo: Path, branch: str) -> bool:
    return bool(git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip())


def show(repo: Path, spec: str) -> bytes | None:
    result = subprocess.run(["git", "show", spec], cwd=repo, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def commit_tree_onto(repo: Path, branch: str, folder: Path, message: str) -> str:
    """Commit the files of `folder` as the next commit of `branch` (created when
    missing), without touching the repository's working tree or index."""
    env = dict(os.environ, GIT_INDEX_FILE=str(Path(folder).parent / f".{Path(folder).name}.index"),
               GIT_WORK_TREE=str(folder), GIT_DIR=str(Path(repo) / ".git"))
    git(repo, "add", "-A", "--force", ".", env=env)
    tree = git(repo, "write-tree", env=env).strip()
    parent = git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip()
    if parent and git(repo, "rev-parse", f"{parent}^{{tree}}").strip() == tree:
        return parent
    commit = git(repo, *_identity(repo), "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message).strip()
    git(repo, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def adopt_history(repo: Path, other: str, message: str) -> None:
    """Make `other` part of HEAD's history with a merge commit that keeps HEAD's files."""
    tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    commit = git(repo, *_identity(repo), "commit-tree", tree, "-p", "HEAD", "-p", other, "-m", message).strip()
    git(repo, "update-ref", "HEAD", commit)


def merge(repo: Path, branch: str, message: str) -> bool:
    """Merge branch into the current one; False when it stops on conflicts."""
    result = subprocess.run(["git", *_identity(repo), "merge", "--no-ff", "--no-edit", "-q", "-m", message, branch],
                            cwd=repo, capture_output=True, text=True)
    return result.returncode == 0


def restore(repo: Path, before: str, original: str | None) -> None:
    """Put the working tree back at commit `before`, then move the branch back to
    `original` keeping the files: hand edits that were uncommitted are so again.

    Ignored files (the app's data in instance/) are never touched: no `git clean -x`.
    """
    git(repo, "reset", "-q", "--hard", before)
    git(repo, "clean", "-q", "-fd")
    if original and original != before:
        git(repo, "reset", "-q", "--mixed", original)
