"""`vgen status`: one row per vertical, read from the apps, their repos and their ports."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


from . import gitrepo, ports, render, spec
from .fleet import TEMPLATE_BRANCH, plain, recorded_answers
from .project import Project


@dataclass
class Row:
    slug: str
    port: int | None
    template: str  # the version the app was generated from, or "" when not generated
    template_current: bool  # generated from the template's current commit
    spec_changed: bool | None  # None when the spec is invalid or the app is missing
    hand_edits: bool | None
    health: str  # "ok", "down" or an HTTP status
    last_backup: str  # time of the last verified backup, or ""


def status(project: Project, timeout: float = 1.0) -> list[Row]:
    verticals, _ = project.load_verticals()
    valid = {v.slug: v for v in verticals}
    registry = ports.load(project.ports_path)
    current = render.template_version(project.root, render.template_commit(project.root))
    # Apps without a spec are listed too; a copy such as apps/shop.bak is no vertical.
    apps = {p.name for p in project.out.glob("*") if spec.SLUG_RE.match(p.name) and (p / ".copier-answers.yml").exists()}
    slugs = sorted(set(project.slugs()) | apps)

    def row(slug: str) -> Row:
        app = project.app_dir(slug)
        port = registry.ports.get(slug)
        answers = recorded_answers(app)
        commit = answers.get("_commit", "")
        spec_changed = None
        if answers and slug in valid and port is not None:
            recorded = {k: v for k, v in answers.items() if not k.startswith("_")}
            spec_changed = recorded != plain(valid[slug].answers(port))
        return Row(
            slug=slug, port=port,
            template=render.template_version(project.root, commit) if commit else "",
            template_current=commit == current,
            spec_changed=spec_changed,
            hand_edits=_hand_edits(app) if answers else None,
            health=_health(port, timeout) if port else "no port",
            last_backup=_last_backup(app, slug),
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(row, slugs))


def _hand_edits(app: Path) -> bool | None:
    """Whether the app differs from the template's own rendering of it (its
    vgen/template branch): committed or not, every hand edit counts."""
    if not gitrepo.is_repo(app) or not gitrepo.branch_exists(app, TEMPLATE_BRANCH):
        return None
    changed = gitrepo.git(app, "diff", "--name-only", TEMPLATE_BRANCH, check=False).strip()
    untracked = gitrepo.git(app, "ls-files", "--others", "--exclude-standard", check=False).strip()
    return bool(changed or untracked)


def _health(port: int, timeout: float) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
            return "ok" if response.status == 200 else str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError:
        return "down"


def _last_backup(app: Path, slug: str) -> str:
    """The time of the last verified backup, from the app's record of its backups."""
    for data_dir in (app / "instance", Path("/var/lib") / slug):
        try:
            record = json.loads((data_dir / "backups" / "last.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        good = record.get("last_good") or (record if record.get("verified") else None)
        if isinstance(good, dict) and good.get("time"):
            return str(good["time"])
    return ""
