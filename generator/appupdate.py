"""One app: create it, update it (a three-way merge that keeps hand edits), adopt an
app made by plain copier, or do any of that on a scratch copy for a dry run.

An app's outcome is one of the Status values. An app that would conflict, be refused
by its own database or fail is left exactly as it was, with the would-be result
committed aside on a branch of its repository (gitrepo.CONFLICT_BRANCH,
gitrepo.REFUSED_BRANCH) for the founder to inspect. Runs in fleet's worker processes:
everything here takes and returns plain, picklable data.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import answers, gitrepo, render, schema
from .errors import VgenError
from .fsutil import locked
from .gitrepo import CONFLICT_BRANCH, REFUSED_BRANCH, TEMPLATE_BRANCH


class Status(enum.StrEnum):
    """What became of one vertical; printed as its value."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"  # the merge with hand edits conflicts: left as it was
    REFUSED = "refused"  # the app's database cannot take the new schema: left as it was
    FAILED = "failed"

    @property
    def is_problem(self) -> bool:
        """The founder must act: vgen generate exits 1."""
        return self in (Status.CONFLICT, Status.REFUSED, Status.FAILED)


@dataclass
class Outcome:
    slug: str
    status: Status
    files: list[str] = field(default_factory=list)
    message: str = ""
    port: int | None = None
    diff: str = ""
    schema: str = ""  # with a dry run: what the app's migrate would do to its database


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to render one vertical; plain data, picklable."""
    slug: str
    root: Path
    commit: str
    version: str
    fingerprint: str
    answers: dict
    app_dir: Path
    dry_run: bool = False


def is_current(job: Job) -> bool:
    """True when the app was last generated from this template commit with these answers."""
    return answers.is_current(job.app_dir, job.version, job.answers)


def generate_one(job: Job) -> Outcome:
    """Create the app when missing, update it when it exists."""
    try:
        if job.dry_run:
            return _dry_run(job)
        with locked(job.app_dir.parent / f".{job.slug}.lock"):
            if not job.app_dir.exists():
                return _create(job)
            return _update(job)
    except VgenError as exc:
        return Outcome(job.slug, Status.FAILED, message=str(exc))


def _dry_run(job: Job) -> Outcome:
    """Do the real work on a scratch copy of the app and report what it would change."""
    if job.app_dir.exists() and not answers.is_app(job.app_dir):
        return Outcome(job.slug, Status.FAILED, message=answers.not_an_app(job.app_dir))
    if gitrepo.is_repo(job.app_dir):
        gitrepo.check_repo(job.app_dir)  # named here, not as the scratch copy
    with tempfile.TemporaryDirectory(prefix=f"vgen-dry-{job.slug}-") as scratch:
        copy = Path(scratch) / job.slug
        if job.app_dir.exists():
            _copy_app(job.app_dir, copy)
            original = gitrepo.head(copy)
        else:
            original = None
        # The copy has no instance/: its database is checked below, read where it is.
        outcome = generate_one(dataclasses.replace(job, app_dir=copy, dry_run=False))
        if outcome.status == Status.CREATED:
            outcome.files = gitrepo.git(copy, "ls-files").splitlines()
        elif outcome.status == Status.UPDATED:
            outcome.diff = gitrepo.git(copy, "diff", "--stat", original, "HEAD") + gitrepo.git(copy, "diff", original, "HEAD")
        if outcome.status in (Status.CREATED, Status.UPDATED):
            try:
                plan = schema.plan(copy, data_dir(job.app_dir))
            except VgenError as exc:
                outcome.schema = str(exc)
            else:
                outcome.schema = plan.text
                if plan.refused:
                    outcome.status, outcome.message = Status.REFUSED, _refusal(job, plan.text, kept=False)
        return outcome


def data_dir(app: Path) -> Path:
    """Where the app keeps its database in development (DATA_DIR's default)."""
    return Path(app) / "instance"


def _copy_app(app: Path, dest: Path) -> None:
    """The app's repository and every file git does not ignore (never instance/ data)."""
    shutil.copytree(app / ".git", dest / ".git") if (app / ".git").exists() else dest.mkdir(parents=True)
    listed = gitrepo.git(app, "ls-files", "-co", "--exclude-standard", "-z").split("\0") if (app / ".git").exists() \
        else [str(p.relative_to(app)) for p in app.rglob("*") if p.is_file()]
    for name in filter(None, listed):
        source = app / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _create(job: Job) -> Outcome:
    """Render into a temporary folder beside the app, commit, then rename into place."""
    job.app_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.slug}.", dir=job.app_dir.parent))
    try:
        render.template(job.root, job.commit).render(job.answers, tmp, str(job.root))
        gitrepo.init(tmp)
        gitrepo.commit_all(tmp, commit_message("Generate", job))
        gitrepo.git(tmp, "branch", TEMPLATE_BRANCH)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        os.rename(tmp, job.app_dir)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return Outcome(job.slug, Status.FAILED, message=_reason(exc))
    return Outcome(job.slug, Status.CREATED)


def _update(job: Job) -> Outcome:
    """Three-way merge of the new rendering into the app, hand edits kept.

    The app's `vgen/template` branch holds exactly what the template rendered each
    time, with no hand edits; the new rendering is committed on it and merged into main,
    so git's merge keeps hand edits and finds conflicts (the same merge copier update
    does, from the old and new renderings). When the app has a database, the merged
    app's migrate then checks that the database can take the new schema.
    """
    app = job.app_dir
    if is_current(job):  # fleet.run skips these before forking; direct callers rely on it
        return Outcome(job.slug, Status.UNCHANGED)
    if not answers.is_app(app):  # never git init, let alone commit, a folder vgen did not make
        return Outcome(job.slug, Status.FAILED, message=answers.not_an_app(app))
    if gitrepo.is_repo(app):
        gitrepo.check_repo(app)
    else:
        gitrepo.init(app)
        gitrepo.commit_all(app, "Existing app, committed by vgen before its first regeneration")
    original = gitrepo.head(app)
    tpl = render.template(job.root, job.commit)
    with tempfile.TemporaryDirectory(prefix=f"vgen-{job.slug}-") as scratch:
        try:
            # Where the template branch was before this run; None when the app is adopted now.
            rendered_before = None
            if gitrepo.branch_exists(app, TEMPLATE_BRANCH):
                rendered_before = gitrepo.git(app, "rev-parse", TEMPLATE_BRANCH).strip()
            else:
                _adopt(app, job, Path(scratch) / "old")
            fresh = Path(scratch) / "new"
            tpl.render(job.answers, fresh, str(job.root))
            _keep_skipped(app, fresh, tpl.skip_if_exists)
            gitrepo.commit_tree_onto(app, TEMPLATE_BRANCH, fresh, commit_message("Render", job))
        except Exception as exc:  # nothing in the app has changed yet
            return Outcome(job.slug, Status.FAILED, message=_reason(exc))
    # A merge needs a clean tree: hand edits become a commit of their own, undone
    # again (files untouched) if this vertical ends in conflict or failure.
    gitrepo.commit_all(app, "Hand edits, committed by vgen before regeneration")
    before = gitrepo.head(app)
    merged = gitrepo.merge(app, TEMPLATE_BRANCH, commit_message("Regenerate", job))
    unmerged = gitrepo.unmerged(app)  # before changed_files, which marks them resolved
    files = gitrepo.changed_files(app, before)
    conflicted = gitrepo.conflicts(app, files, unmerged)
    if conflicted or not merged:
        gitrepo.save_aside(app, CONFLICT_BRANCH, commit_message("Conflicted regeneration", job),
                           also_parent=TEMPLATE_BRANCH)
        gitrepo.git(app, "merge", "--abort", check=False)
        gitrepo.restore(app, before, original)
        return Outcome(job.slug, Status.CONFLICT, files=conflicted,
                       message=f"left as it was; the merge result is on branch {CONFLICT_BRANCH}")
    if gitrepo.head(app) == before:
        return Outcome(job.slug, Status.UNCHANGED)
    files = [f for f in files if f != render.ANSWERS_FILE]
    return _check_database(job, before, original, rendered_before, files)


def _check_database(job: Job, before: str, original: str | None, rendered_before: str | None,
                    files: list[str]) -> Outcome:
    """Keep the merged update only if the app's database can take its schema.

    The app runs migrate before it serves: an update its data cannot take (a field
    made required over empty values, a choice removed that rows still use) would leave
    an app that no longer starts. Such an update is undone (the app's branch and files,
    and TEMPLATE_BRANCH, back at rendered_before, or gone again for an app adopted in
    this run) and set aside on REFUSED_BRANCH; the database is only read. When migrate cannot be run at
    all here, the update stays and the outcome says so.
    """
    app = job.app_dir
    if not schema.has_database(data_dir(app)):
        return Outcome(job.slug, Status.UPDATED, files=files)
    try:
        plan = schema.plan(app, data_dir(app))
    except VgenError as exc:
        return Outcome(job.slug, Status.UPDATED, files=files,
                       message=f"its database was not checked against the new schema: {exc}")
    if not plan.refused:
        return Outcome(job.slug, Status.UPDATED, files=files)
    gitrepo.git(app, "branch", "-f", REFUSED_BRANCH, "HEAD")
    gitrepo.restore(app, before, original)
    if rendered_before:
        gitrepo.git(app, "update-ref", f"refs/heads/{TEMPLATE_BRANCH}", rendered_before)
    else:
        gitrepo.git(app, "branch", "-D", TEMPLATE_BRANCH)
    return Outcome(job.slug, Status.REFUSED, files=files, message=_refusal(job, plan.text, kept=True))


def _refusal(job: Job, migrate_says: str, kept: bool) -> str:
    """Why the vertical is refused, in migrate's words, and the ways out."""
    aside = f"; the update is on branch {REFUSED_BRANCH}" if kept else ""
    said = migrate_says.removeprefix("Error: ").strip()
    return (f"left as it was{aside}: its database ({data_dir(job.app_dir)}) cannot take the new schema, "
            f"so the app would no longer start. {said}\n"
            "Either change those rows first (set the missing values; for a removed or renamed "
            "choice, map its rows to a choice the spec keeps), or change the spec back; "
            f"then run vgen generate {job.slug} again")


def _adopt(app: Path, job: Job, scratch: Path) -> None:
    """Give an app made elsewhere (plain copier) its vgen/template branch.

    The old rendering (from the answers file's commit and answers) becomes the branch,
    joined into main's history by a merge that keeps main's files, so the next merge
    has it as the common base, as copier update would.
    """
    recorded = answers.recorded(app)
    old_commit = gitrepo.git(job.root, "rev-parse", "--verify", "-q", f"{recorded.get('_commit', '')}^{{commit}}", check=False).strip()
    if not old_commit:
        raise VgenError(f"{app}: {render.ANSWERS_FILE} names template commit {recorded.get('_commit')!r}, "
                        "which the template repository does not have")
    old = render.template(job.root, old_commit)
    old.render(answers.questions(recorded), scratch, recorded.get("_src_path", str(job.root)))
    base = gitrepo.commit_tree_onto(app, TEMPLATE_BRANCH, scratch, "Template rendering the app was made from")
    gitrepo.adopt_history(app, base, "Adopt the app into vgen: record the template rendering it was made from")


def _keep_skipped(app: Path, fresh: Path, patterns: list[str]) -> None:
    """Files the founder owns once created (copier's _skip_if_exists) keep flowing from
    the previous rendering, so regeneration never changes them."""
    for pattern in patterns:
        for path in fresh.glob(pattern):
            rel = path.relative_to(fresh).as_posix()
            if (app / rel).exists():
                previous = gitrepo.show(app, f"{TEMPLATE_BRANCH}:{rel}")
                if previous is not None:
                    path.write_bytes(previous)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def commit_message(verb: str, job: Job) -> str:
    return f"{verb} {job.slug} from template {job.version} (spec {job.fingerprint})"
