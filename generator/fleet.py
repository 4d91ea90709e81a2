"""`vgen generate`: plan the verticals asked for, run them in parallel, report.

Verticals are rendered in parallel worker processes (rendering is CPU work, and the
GIL would serialize threads), forked after the template is compiled once. What happens
to one app is appupdate's business; this module decides which apps, with which answers
and ports, and gathers their outcomes into one Report that the CLI prints and that
other callers (tests, vgen new, deploy) read.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from . import ports, render, status
from .appupdate import Job, Outcome, Status, generate_one, is_current
from .errors import VgenError
from .fsutil import check_folder, locked
from .project import Project

# How long a served app has to answer /healthz before vgen takes it for not running.
HEALTH_TIMEOUT = 0.5


@dataclass
class Report:
    """What vgen generate did, or with dry_run would do."""

    outcomes: list[Outcome]
    new_ports: dict[str, int] = field(default_factory=dict)  # assigned (or, dry run, to be)
    warnings: list[str] = field(default_factory=list)  # e.g. template changes not committed
    serving: list[Outcome] = field(default_factory=list)  # updated, and answering on their port
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """No vertical conflicts, is refused or fails."""
        return not any(o.status.is_problem for o in self.outcomes)

    def by_slug(self) -> dict[str, Outcome]:
        return {o.slug: o for o in self.outcomes}


def generate(project: Project, slugs: list[str] | None, jobs: int | None = None, dry_run: bool = False,
             on_done=None) -> Report:
    """Create each app that is missing and update each that exists (slugs None: all).

    on_done(outcome, done, total) is called as each vertical finishes, for progress.
    Raises VgenError for what stops the whole run (an unknown slug, a broken
    ports.toml, an --out that cannot be a folder); a vertical's own trouble is its
    outcome.
    """
    check_folder(project.out, "output folder")
    warnings = []
    dirty = render.uncommitted_template_changes(project.root)
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        warnings.append(f"uncommitted template changes are not used ({shown}): "
                        "apps are rendered from the last commit of the template")
    job_list, failures, new_ports = plan(project, slugs, dry_run=dry_run)
    progress = None
    if on_done:
        finished = []

        def progress(outcome):
            finished.append(outcome)
            on_done(outcome, len(finished), len(job_list))

    outcomes = run(job_list, jobs, on_done=progress) + failures
    serving = [] if dry_run else [o for o in outcomes if o.status == Status.UPDATED and is_serving(o.port)]
    return Report(outcomes, new_ports, warnings, serving, dry_run)


def is_serving(port: int | None) -> bool:
    """True when something answers /healthz on the port with 200: the app is running."""
    return port is not None and status.health(port, HEALTH_TIMEOUT) == "ok"


def plan(project: Project, slugs: list[str] | None, dry_run: bool = False) -> tuple[list[Job], list[Outcome], dict[str, int]]:
    """Jobs for the valid verticals asked for, failures for the invalid ones, new ports.

    Assigns ports to verticals that have none and saves ports.toml (unless dry_run).
    """
    verticals, problems = project.load_verticals()
    known = project.slugs()
    wanted = known if slugs is None else list(dict.fromkeys(slugs))
    missing = [s for s in wanted if s not in known]
    if missing:
        raise VgenError(
            "no spec for " + ", ".join(project.shown(project.spec_path(s)) for s in missing)
            + (f" (known: {', '.join(known)})" if known else " (no verticals yet: vgen new SLUG)")
        )
    by_slug = {v.slug: v for v in verticals}
    failures = []
    for slug in wanted:
        if slug not in by_slug:
            mine = [p for p in problems if p.path == project.shown(project.spec_path(slug))]
            failures.append(Outcome(slug, Status.FAILED, message="invalid spec: " + "; ".join(
                p.format(with_path=False) for p in mine) if mine else "invalid spec"))
    valid = [by_slug[s] for s in wanted if s in by_slug]

    with locked(project.ports_lock):
        registry = ports.load(project.ports_path)
        new_ports = ports.assign(registry, [v.slug for v in valid])
        if new_ports and not dry_run:
            ports.save(registry)

    # A hand-edited ports.toml can give a vertical a port another one has, or a reserved
    # one: such a vertical fails rather than render an app bound to that port.
    usable = []
    for v in valid:
        port_problems = ports.port_problems(registry, v.slug)
        if port_problems:
            failures.append(Outcome(v.slug, Status.FAILED, port=registry.ports[v.slug],
                                    message="; ".join(str(p) for p in port_problems)))
        else:
            usable.append(v)
    valid = usable

    commit = render.template_commit(project.root)
    version = render.template_version(project.root, commit)
    jobs = [
        Job(
            slug=v.slug, root=project.root, commit=commit, version=version,
            fingerprint=v.fingerprint(), answers=v.answers(registry.ports[v.slug]),
            app_dir=project.app_dir(v.slug), dry_run=dry_run,
        )
        for v in valid
    ]
    return jobs, failures, new_ports


def run(jobs: list[Job], workers: int | None = None, on_done=None) -> list[Outcome]:
    """Run jobs in worker processes; call on_done(outcome) as each finishes."""
    outcomes = []
    # Unchanged verticals are found here, before any worker starts: reading an answers
    # file is all they cost.
    pending = []
    for job in jobs:
        if not job.dry_run and job.app_dir.exists() and is_current(job):
            outcomes.append(Outcome(job.slug, Status.UNCHANGED, port=job.answers["port"]))
            if on_done:
                on_done(outcomes[-1])
        else:
            pending.append(job)
    order = {job.slug: i for i, job in enumerate(jobs)}
    if not pending:
        return sorted(outcomes, key=lambda o: order[o.slug])
    workers = max(1, min(workers or os.cpu_count() or 1, len(pending)))
    # fork: workers inherit the template compiled here once. Callers must not run
    # threads while this forks (the CLI's progress bar does not auto-refresh for that).
    for root, commit in {(job.root, job.commit) for job in pending}:
        render.template(root, commit).compile()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(generate_one, job): job for job in pending}
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # a crashed worker fails its vertical, not the run
                outcome = Outcome(job.slug, Status.FAILED, message=f"{type(exc).__name__}: {exc}")
            outcome.port = job.answers["port"]
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    return sorted(outcomes, key=lambda o: order[o.slug])
