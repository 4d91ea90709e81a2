"""Where things are: the template repository, its verticals, ports.toml and the apps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import placement, ports, spec
from .errors import Problem, VgenError
from .gitrepo import git


@dataclass(frozen=True)
class Project:
    root: Path  # the template repository: copier.yml, template/, verticals/, ports.toml
    out: Path  # where generated apps live (apps/ unless --out or VGEN_OUT)

    @property
    def verticals_dir(self) -> Path:
        return self.root / "verticals"

    @property
    def ports_path(self) -> Path:
        return self.root / "ports.toml"

    @property
    def hosts_path(self) -> Path:
        return self.root / "hosts.toml"

    @property
    def ports_lock(self) -> Path:
        """Held while ports.toml is read, assigned and written. It lives in the
        repository's git folder, which in a git worktree is not root/.git (a file there)."""
        git_dir = git(self.root, "rev-parse", "--absolute-git-dir", check=False).strip()
        return Path(git_dir or self.root / ".git") / "vgen" / "ports.lock"

    def spec_path(self, slug: str) -> Path:
        return self.verticals_dir / f"{slug}.toml"

    def app_dir(self, slug: str) -> Path:
        return self.out / slug

    def shown(self, path: Path) -> str:
        """A path as messages show it: relative to the project when inside it."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def load_verticals(self) -> tuple[list[spec.Vertical], list[Problem]]:
        return spec.load_verticals(self.verticals_dir, self.root)

    def slugs(self) -> list[str]:
        """Every vertical with a spec file, valid or not."""
        return sorted(p.stem for p in self.verticals_dir.glob("*.toml"))


def find_project(root: str | Path | None = None, out: str | Path | None = None) -> Project:
    """The project at `root`, or the nearest folder up from here holding copier.yml and
    verticals/, or the repository vgen is installed from."""
    if root is None:
        root = os.environ.get("VGEN_PROJECT")
    if root is not None:
        root = Path(root).resolve()
        if not (root / "copier.yml").is_file():
            raise VgenError(f"{root}: not a vgen project (no copier.yml there)")
    else:
        candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[1]]
        root = next(
            (c for c in candidates if (c / "copier.yml").is_file() and (c / "verticals").is_dir()),
            None,
        )
        if root is None:
            raise VgenError("no vgen project here: run vgen inside the template repository or pass --project")
    if out is None:
        out = os.environ.get("VGEN_OUT") or root / "apps"
    return Project(root=root, out=Path(out).resolve())


def check(project: Project) -> list[Problem]:
    """Every problem in every spec, in ports.toml and in hosts.toml (when there is one)."""
    _, problems = project.load_verticals()
    problems += placement.load(project.hosts_path, project.slugs())[1]
    try:
        registry = ports.load(project.ports_path)
    except VgenError as exc:  # ports.toml unreadable: its problems, then no registry to check
        return problems + exc.problems
    return problems + ports.check(registry, project.slugs())
