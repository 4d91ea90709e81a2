"""Generate and regenerate apps: one vertical at a time, or the whole fleet in parallel.

Verticals are rendered in parallel worker processes (rendering is CPU work, and the
GIL would serialize threads), forked after the template is compiled once. A vertical's
outcome is one of created, updated, unchanged, conflict or failed; a
vertical that conflicts or fails is left exactly as it was, with the would-be result
committed aside on the app's ``vgen/conflict`` branch for the user to inspect.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import gitrepo, ports, render, schema, spec
from .errors import VgenError
from .fsutil import atomic_write_text, locked
from .project import Project

CONFLICT_BRANCH = "vgen/conflict"
TEMPLATE_BRANCH = "vgen/template"


@dataclass
class Outcome:
    slug: str
    status: str  # created | updated | unchanged | conflict | failed
    files: list[str] = field(default_factory=list)
    message: str = ""
    port: int | None = None
    diff: str = ""
    schema: str = ""  # with a dry run: what the app's migrate would do to its database
    dry_run: bool = False


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
            failures.append(Outcome(v.slug, "failed", port=registry.ports[v.slug],
                                    message="; ".join(port_problems)))
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


# --- starting a vertical (vgen new) -------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """What start_vertical wrote, so undo_start can take exactly that back."""
    slug: str
    spec_path: Path
    port: int
    assigned: bool  # False when ports.toml already had a port for the slug


def start_vertical(project: Project, slug: str, name: str | None) -> Started:
    """Write the starter spec and give the vertical its port; generate it next.

    Everything is checked before anything is written: the slug, the name, that neither
    the spec nor a folder at the app's place exists, ports.toml and a free port.
    """
    if not spec.SLUG_RE.match(slug):
        raise VgenError(f'slug "{slug}" must match ^[a-z][a-z0-9]{{1,30}}$ (a lower-case letter, then 1 to 30 lower-case letters or digits)')
    display = slug.capitalize() if name is None else name
    problem = spec.text_problem(display) if display.strip() else "must not be empty"
    if problem is None and len(display) > 80:
        problem = "is longer than 80 characters"
    if problem:
        raise VgenError(f"--name {display!r}: the name {problem}")
    path = project.spec_path(slug)
    if path.exists():
        raise VgenError(f"{project.shown(path)} already exists: edit it, then run vgen generate {slug}")
    app = project.app_dir(slug)
    if app.exists() or app.is_symlink():
        if not is_app(app):
            raise VgenError(not_an_app(app, project.shown(app)))
        raise VgenError(f"{project.shown(app)} already exists: put its spec back at {project.shown(path)} "
                        f"and run vgen generate {slug}, or move the app away")
    display = display.strip()
    text = STARTER.format(slug=slug, title=display, name=display.replace("\\", "\\\\").replace('"', '\\"'))
    with tempfile.TemporaryDirectory(prefix="vgen-new-") as scratch:
        trial = Path(scratch) / path.name
        trial.write_text(text, encoding="utf-8")
        spec.load_vertical(trial, project.shown(path))
    with locked(project.ports_lock):
        registry = ports.load(project.ports_path)
        assigned = bool(ports.assign(registry, [slug]))
        problems = ports.port_problems(registry, slug)
        if problems:
            raise VgenError(f"{slug} cannot use its port in ports.toml", problems)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        try:
            if assigned:
                ports.save(registry)
        except BaseException:
            path.unlink()
            raise
    return Started(slug, path, registry.ports[slug], assigned)


def undo_start(project: Project, started: Started) -> None:
    """Remove the spec start_vertical wrote and the port it assigned."""
    started.spec_path.unlink(missing_ok=True)
    if started.assigned:
        with locked(project.ports_lock):
            registry = ports.load(project.ports_path)
            if registry.ports.get(started.slug) == started.port:
                ports.forget(registry, started.slug)
                ports.save(registry)


STARTER = '''\
# The {title} vertical. Edit, then run: vgen generate {slug}
# Field types: string text integer decimal boolean date datetime email url choice ref
slug = "{slug}"
name = "{name}"
tagline = ""

[[entities]]
name = "customer"
search = ["name", "email"]
fields = [
  {{ name = "name", type = "string", required = true, max_length = 80 }},
  {{ name = "email", type = "email" }},
  {{ name = "notes", type = "text" }},
]

[[entities]]
name = "job"
list = ["title", "customer", "due_on", "status"]
search = ["title"]
fields = [
  {{ name = "title", type = "string", required = true, max_length = 120 }},
  {{ name = "customer", type = "ref", to = "customer", on_delete = "restrict" }},
  {{ name = "due_on", type = "date" }},
  {{ name = "status", type = "choice", choices = ["open", "done"], default = "open" }},
  {{ name = "price", type = "decimal", places = 2, min = 0 }},
]
'''


def run(jobs: list[Job], workers: int | None = None, on_done=None) -> list[Outcome]:
    """Run jobs in worker processes; call on_done(outcome) as each finishes."""
    outcomes = []
    # Unchanged verticals are found here, before any worker starts: reading an answers
    # file is all they cost.
    pending = []
    for job in jobs:
        if not job.dry_run and job.app_dir.exists() and is_current(job):
            outcomes.append(Outcome(job.slug, "unchanged", port=job.answers["port"]))
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
                outcome = Outcome(job.slug, "failed", message=f"{type(exc).__name__}: {exc}")
            outcome.port = job.answers["port"]
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    return sorted(outcomes, key=lambda o: order[o.slug])


# --- one vertical (runs in a worker process) ---------------------------------------------


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
        return Outcome(job.slug, "failed", message=str(exc))


def _dry_run(job: Job) -> Outcome:
    """Do the real work on a scratch copy of the app and report what it would change."""
    if job.app_dir.exists() and not is_app(job.app_dir):
        return Outcome(job.slug, "failed", message=not_an_app(job.app_dir))
    if gitrepo.is_repo(job.app_dir):
        gitrepo.check_repo(job.app_dir)  # named here, not as the scratch copy
    with tempfile.TemporaryDirectory(prefix=f"vgen-dry-{job.slug}-") as scratch:
        copy = Path(scratch) / job.slug
        if job.app_dir.exists():
            _copy_app(job.app_dir, copy)
            original = gitrepo.head(copy)
        else:
            original = None
        outcome = generate_one(dataclasses.replace(job, app_dir=copy, dry_run=False))
        if outcome.status == "created":
            outcome.files = gitrepo.git(copy, "ls-files").splitlines()
            outcome.diff = ""
        elif outcome.status == "updated":
            outcome.diff = gitrepo.git(copy, "diff", "--stat", original, "HEAD") + gitrepo.git(copy, "diff", original, "HEAD")
        if outcome.status in ("created", "updated"):
            try:
                outcome.schema = schema.schema_plan(copy, job.app_dir / "instance")
            except VgenError as exc:
                outcome.schema = str(exc)
        outcome.dry_run = True
        return outcome


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
        return Outcome(job.slug, "failed", message=_reason(exc))
    return Outcome(job.slug, "created")


def _update(job: Job) -> Outcome:
    """Three-way merge of the new rendering into the app, hand edits kept.

    The app's `vgen/template` branch holds exactly what the template rendered each
    time, with no hand edits; the new rendering is committed on it and merged into main,
    so git's merge keeps hand edits and finds conflicts (the same merge copier update
    does, from the old and new renderings).
    """
    app = job.app_dir
    if is_current(job):  # run() skips these before forking; direct callers rely on it
        return Outcome(job.slug, "unchanged")
    if not is_app(app):  # never git init, let alone commit, a folder vgen did not make
        return Outcome(job.slug, "failed", message=not_an_app(app))
    if gitrepo.is_repo(app):
        gitrepo.check_repo(app)
    else:
        gitrepo.init(app)
        gitrepo.commit_all(app, "Existing app, committed by vgen before its first regeneration")
    original = gitrepo.head(app)
    tpl = render.template(job.root, job.commit)
    with tempfile.TemporaryDirectory(prefix=f"vgen-{job.slug}-") as scratch:
        try:
            if not gitrepo.branch_exists(app, TEMPLATE_BRANCH):
                _adopt(app, job, Path(scratch) / "old")
            fresh = Path(scratch) / "new"
            tpl.render(job.answers, fresh, str(job.root))
            _keep_skipped(app, fresh, tpl.skip_if_exists)
            gitrepo.commit_tree_onto(app, TEMPLATE_BRANCH, fresh, commit_message("Render", job))
        except Exception as exc:  # nothing in the app has changed yet
            return Outcome(job.slug, "failed", message=_reason(exc))
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
        return Outcome(job.slug, "conflict", files=conflicted,
                       message=f"left as it was; the merge result is on branch {CONFLICT_BRANCH}")
    if gitrepo.head(app) == before:
        return Outcome(job.slug, "unchanged")
    return Outcome(job.slug, "updated", files=[f for f in files if f != ".copier-answers.yml"])


def _adopt(app: Path, job: Job, scratch: Path) -> None:
    """Give an app made elsewhere (plain copier) its vgen/template branch.

    The old rendering (from the answers file's commit and answers) becomes the branch,
    joined into main's history by a merge that keeps main's files, so the next merge
    has it as the common base, as copier update would.
    """
    recorded = recorded_answers(app)
    old_commit = gitrepo.git(job.root, "rev-parse", "--verify", "-q", f"{recorded.get('_commit', '')}^{{commit}}", check=False).strip()
    if not old_commit:
        raise VgenError(f"{app}: .copier-answers.yml names template commit {recorded.get('_commit')!r}, "
                        "which the template repository does not have")
    old = render.template(job.root, old_commit)
    old.render({k: v for k, v in recorded.items() if not k.startswith("_")}, scratch, recorded.get("_src_path", str(job.root)))
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


def is_app(path: Path) -> bool:
    """True when the folder is an app made from the template (by vgen or plain copier):
    its .copier-answers.yml names the template commit it was rendered from."""
    return bool(recorded_answers(path).get("_commit"))


def not_an_app(app: Path, shown: str | None = None) -> str:
    """Why vgen will not touch the folder at app (is_app is False): its answers file is
    damaged, or it was not made from the template at all."""
    shown = shown or str(app)
    path = app / ".copier-answers.yml"
    try:
        yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError:
        pass
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return (f"{shown}/.copier-answers.yml is damaged ({_yaml_problem(exc)}), so vgen cannot tell "
                "which template commit and answers the app was made from: repair it, for example "
                f"from the last rendering: git -C {shown} checkout {TEMPLATE_BRANCH} -- .copier-answers.yml")
    return f"{shown} exists and is not a vgen app: move it away"


def _yaml_problem(exc: Exception) -> str:
    """A YAML or decoding error in one line: what is wrong, and where."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: {exc.reason} at byte {exc.start}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML: {problem}{where}"


def is_current(job: Job) -> bool:
    """True when the app was last generated from this template commit with these answers."""
    recorded = recorded_answers(job.app_dir)
    if recorded.get("_commit") != job.version:
        return False
    return {k: v for k, v in recorded.items() if not k.startswith("_")} == plain(job.answers)


# libyaml's loader where installed: reading every app's answers is most of a no-change run.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def recorded_answers(app: Path) -> dict:
    """The app's .copier-answers.yml, or {} when it is missing, unreadable or not a mapping."""
    try:
        answers = yaml.load((app / ".copier-answers.yml").read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return answers if isinstance(answers, dict) else {}


def plain(answers: dict) -> dict:
    """The answers as they read back from YAML (tuples become lists and so on)."""
    return yaml.load(yaml.dump(answers, Dumper=_Dumper), Loader=_Loader)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def commit_message(verb: str, job: Job) -> str:
    return f"{verb} {job.slug} from template {job.version} (spec {job.fingerprint})"
