"""`vgen new`: a starter spec, a port and a generated app, or nothing at all.

Everything is checked before anything is written; when the app cannot be generated,
the spec and the port written for it are taken back, so that a second try starts clean.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import fleet, ports, spec
from .answers import is_app, not_an_app
from .appupdate import Status
from .errors import VgenError
from .fsutil import atomic_write_text, locked
from .project import Project


@dataclass(frozen=True)
class Started:
    """What start_vertical wrote, so undo_start can take exactly that back."""
    slug: str
    spec_path: Path
    port: int
    assigned: bool  # False when ports.toml already had a port for the slug


@dataclass
class NewVertical:
    """What vgen new did: the spec and port it wrote, and the generation's report."""

    started: Started
    report: fleet.Report
    kept: bool  # False: the app was not generated, and the spec and port were taken back

    def failure(self, project: Project) -> str:
        """Why nothing was kept, and what was taken back ("" when kept)."""
        if self.kept:
            return ""
        s = self.started
        taken = f"removed {project.shown(s.spec_path)}" + (" and its port" if s.assigned else "")
        stays = "" if s.assigned else f" (its port {s.port} was there before and stays)"
        return f"{s.slug} was not generated: {taken}{stays}"


def new_vertical(project: Project, slug: str, name: str | None = None, on_done=None) -> NewVertical:
    """Write verticals/SLUG.toml, give it a port and generate its app.

    Raises VgenError, having written nothing, when the slug, the name, ports.toml or
    the app's place stands in the way; a generation that fails is reported (kept False).
    """
    started = start_vertical(project, slug, name)
    try:
        report = fleet.generate(project, [slug], jobs=1, on_done=on_done)
    except BaseException:
        undo_start(project, started)
        raise
    kept = all(o.status == Status.CREATED for o in report.outcomes)
    if not kept:
        undo_start(project, started)
    return NewVertical(started, report, kept)


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

