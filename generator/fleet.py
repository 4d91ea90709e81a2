"""Generate and regenerate apps: one vertical at a time, or the whole fleet in parallel.

Each vertical is rendered in a worker process (copier changes the working directory).
A vertical's outcome is one of created, updated, unchanged, conflict or failed; a
vertical that conflicts or fails is left exactly as it was, with the would-be result
committed aside on the app's ``vgen/conflict`` branch for the user to inspect.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import gitrepo, ports, render
from .errors import VgenError
from .project import Project

CONFLICT_BRANCH = "vgen/conflict"


@dataclass
class Outcome:
    slug: str
    status: str  # created | updated | unchanged | conflict | failed
    files: list[str] = field(default_factory=list)
    message: str = ""
    port: int | None = None
    new_port: bool = False


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


def plan(project: Project, slugs: list[str] | None) -> tuple[list[Job], list[Outcome], dict[str, int]]:
    """Jobs for the valid verticals asked for, failures for the invalid ones, new ports.

    Assigns ports to verticals that have none and saves ports.toml.
    """
    verticals, problems = project.load_verticals()
    known = project.slugs()
    wanted = known if slugs is None else list(dict.fromkeys(slugs))
    missing = [s for s in wanted if s not in known]
    if missing:
        raise VgenError(
            "no spec for " + ", ".join(f"verticals/{s}.toml" for s in missing)
            + (f" (known: {', '.join(known)})" if known else " (no verticals yet: vgen new SLUG)")
        )
    by_slug = {v.slug: v for v in verticals}
    failures = []
    for slug in wanted:
        if slug not in by_slug:
            mine = [p for p in problems if p.startswith(f"verticals/{slug}.toml:")]
            failures.append(Outcome(slug, "failed", message="invalid spec: " + "; ".join(
                p.split(": ", 1)[1] for p in mine) if mine else "invalid spec"))
    valid = [by_slug[s] for s in wanted if s in by_slug]

    registry = ports.load(project.ports_path)
    new_ports = ports.assign(registry, [v.slug for v in valid])
    if new_ports:
        ports.save(registry)

    commit = render.template_commit(project.root)
    version = render.template_version(project.root, commit)
    jobs = [
        Job(
            slug=v.slug, root=project.root, commit=commit, version=version,
            fingerprint=v.fingerprint(), answers=v.answers(registry.ports[v.slug]),
            app_dir=project.app_dir(v.slug),
        )
        for v in valid
    ]
    return jobs, failures, new_ports


def run(jobs: list[Job], workers: int | None = None, on_done=None) -> list[Outcome]:
    """Run jobs in worker processes; call on_done(outcome) as each finishes."""
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    outcomes = []
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(generate_one, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # a crashed worker fails its vertical, not the run
                outcome = Outcome(job.slug, "failed", message=f"{type(exc).__name__}: {exc}")
            outcome.port = job.answers["port"]
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    order = {job.slug: i for i, job in enumerate(jobs)}
    return sorted(outcomes, key=lambda o: order[o.slug])


# --- one vertical (runs in a worker process) ---------------------------------------------


def generate_one(job: Job) -> Outcome:
    """Create the app when missing, update it when it exists."""
    try:
        if not job.app_dir.exists():
            return _create(job)
        return _update(job)
    except VgenError as exc:
        return Outcome(job.slug, "failed", message=str(exc))


def _create(job: Job) -> Outcome:
    """Render into a temporary folder beside the app, commit, then rename into place."""
    job.app_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.slug}.", dir=job.app_dir.parent))
    try:
        render.copy(job.root, job.commit, job.answers, tmp)
        gitrepo.init(tmp)
        gitrepo.commit_all(tmp, commit_message("Generate", job))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        os.rename(tmp, job.app_dir)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return Outcome(job.slug, "failed", message=_reason(exc))
    return Outcome(job.slug, "created")


def _update(job: Job) -> Outcome:
    app = job.app_dir
    if not gitrepo.is_repo(app):
        gitrepo.init(app)
        gitrepo.commit_all(app, "Existing app, committed by vgen before its first regeneration")
    elif not gitrepo.is_clean(app):
        gitrepo.commit_all(app, "Hand edits, committed by vgen before regeneration")
    if is_current(job):
        return Outcome(job.slug, "unchanged")
    before = gitrepo.head(app)
    try:
        render.update(job.commit, job.answers, app)
    except Exception as exc:
        _reset(app, before)
        return Outcome(job.slug, "failed", message=_reason(exc))
    files = [f for f in gitrepo.changed_files(app, before) if f != ".copier-answers.yml"]
    conflicted = gitrepo.conflicts(app, files)
    if conflicted:
        gitrepo.save_aside_and_reset(app, before, CONFLICT_BRANCH, commit_message("Conflicted regeneration", job))
        return Outcome(job.slug, "conflict", files=conflicted,
                       message=f"left as it was; the merge result is on branch {CONFLICT_BRANCH}")
    if not gitrepo.commit_all(app, commit_message("Regenerate", job)):
        return Outcome(job.slug, "unchanged")
    return Outcome(job.slug, "updated", files=files)


def is_current(job: Job) -> bool:
    """True when the app was last generated from this template commit with these answers."""
    answers_file = job.app_dir / ".copier-answers.yml"
    try:
        recorded = yaml.safe_load(answers_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False
    if recorded.get("_commit") != job.commit:
        return False
    return {k: v for k, v in recorded.items() if not k.startswith("_")} == _plain(job.answers)


def _plain(answers: dict) -> dict:
    """The answers as they read back from YAML (tuples become lists and so on)."""
    return yaml.safe_load(yaml.safe_dump(answers))


def _reset(app: Path, before: str | None) -> None:
    if before:
        gitrepo.git(app, "reset", "-q", "--hard", before)
        gitrepo.git(app, "clean", "-q", "-fd")


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def commit_message(verb: str, job: Job) -> str:
    return f"{verb} {job.slug} from template {job.version} (spec {job.fingerprint})"
