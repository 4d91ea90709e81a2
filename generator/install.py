"""`vgen install`: lay each app and its deploy files under a root, as they sit under /.

For a vertical `cheesemaking` generated in OUT/cheesemaking, install(["cheesemaking"],
root, OUT) writes:

    ROOT/srv/vgen/cheesemaking/                   the app (without instance/, .venv, .git)
    ROOT/etc/systemd/system/cheesemaking.service  gunicorn under systemd
    ROOT/etc/systemd/system/cheesemaking-backup.service   the nightly backup (oneshot)
    ROOT/etc/cron.d/cheesemaking                  starts the backup unit each night
    ROOT/etc/nginx/sites-available/cheesemaking.conf
    ROOT/etc/nginx/sites-enabled/cheesemaking.conf -> ../sites-available/cheesemaking.conf

Every file is written atomically and only when its content or mode differs, so a second
run changes nothing. A file vgen did not lay is never replaced: a slug such as `ssh`,
`cron` or `nginx` whose unit exists on the box (in /etc/systemd/system,
/lib/systemd/system or /usr/lib/systemd/system), or a cron or nginx file of that name,
stops the install before anything is written. vgen knows its own files by their first
line, which says where `vgen install` puts them ("# Shop: ..., installed as
/etc/cron.d/shop ..."). The app folder mirrors the generated app: files gone from the app
are removed, but its .venv (made on the box) and instance/ (data) are never touched.
The generated units, cron file and nginx site all use the /srv/vgen/<slug> layout.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import Problem, VgenError
from .fsutil import check_folder
from .spec import SLUG_RE

APPS_DIR = Path("srv/vgen")  # under the root; the units' WorkingDirectory
# Where systemd finds units (under the root): a unit of the slug's name in any of them
# is the system's, which the app's would replace or override.
UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
# Never copied from the generated app, never removed from the installed one.
EXCLUDED = {"instance", ".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class Laid:
    """One path install() manages, and what it did to it."""

    path: Path  # absolute, under the root
    status: str  # "created", "updated", "unchanged" or "removed"


def install(slugs: list[str], root: Path, out: Path) -> list[Laid]:
    """Lay each vertical's app, units, cron file and nginx site under root."""
    root, out = Path(root), Path(out)
    check_folder(root, "--root")
    if not slugs:
        raise VgenError("no vertical to install: name one or more, or use --all")
    apps = [_generated_app(slug, out) for slug in slugs]
    _check_no_static_users(slugs, root)
    _check_not_the_systems(slugs, root)
    laid: list[Laid] = []
    journal = _Journal()
    try:
        for slug, app in zip(slugs, apps):
            deploy = app / "deploy"
            laid += _mirror(app, root / APPS_DIR / slug, journal)
            for source, target in _deploy_files(slug):
                laid.append(_lay_file(root / target, (deploy / source).read_bytes(), 0o644, journal))
            laid.append(_lay_symlink(root / _site_link(slug), _site_target(slug), journal))
    except OSError as exc:
        journal.undo()
        where = exc.filename if exc.filename is not None else root
        raise VgenError(f"{where}: {exc.strerror or exc}; vgen install took back what it had laid "
                        f"under {root}, so nothing changed there") from None
    except BaseException:
        journal.undo()
        raise
    return laid


class _Journal:
    """What install() changed, so that a step failing half-way (a full disk, a folder
    it may not write) can put everything back: never a half-installed vertical."""

    def __init__(self):
        self._undo = []  # what puts each change back, in the order the changes were made

    def before_change(self, path: Path) -> None:
        """Remember path as it is (a file, a link or nothing) before it is written or removed."""
        if path.is_symlink():
            target = os.readlink(path)
            self._undo.append(lambda: (path.unlink(missing_ok=True), os.symlink(target, path)))
        elif path.is_file():
            content, mode = path.read_bytes(), path.stat().st_mode & 0o777
            self._undo.append(lambda: (path.write_bytes(content), os.chmod(path, mode)))
        else:
            self._undo.append(lambda: path.unlink(missing_ok=True))

    def before_mkdir(self, path: Path) -> None:
        """Remember the folders `mkdir -p path` is about to create, to remove them again."""
        missing = []
        while not os.path.lexists(path) and path != path.parent:
            missing.append(path)
            path = path.parent
        for folder in reversed(missing):  # parents first: undone in reverse, deepest first
            self._undo.append(lambda folder=folder: folder.rmdir() if folder.is_dir() else None)

    def removed_dir(self, path: Path, mode: int) -> None:
        self._undo.append(lambda: (path.mkdir(exist_ok=True), os.chmod(path, mode)))

    def undo(self) -> None:
        for step in reversed(self._undo):
            try:
                step()
            except OSError:
                pass  # put back all that can be; the error that stopped install is reported
        self._undo.clear()


def _deploy_files(slug: str) -> list[tuple[str, str]]:
    """(file in the app's deploy/, where it goes under the root)."""
    return [
        (f"{slug}.service", f"etc/systemd/system/{slug}.service"),
        (f"{slug}-backup.service", f"etc/systemd/system/{slug}-backup.service"),
        # cron ignores /etc/cron.d files whose names contain a dot.
        (f"{slug}.cron", f"etc/cron.d/{slug}"),
        (f"{slug}.nginx.conf", f"etc/nginx/sites-available/{slug}.conf"),
    ]


def _site_link(slug: str) -> str:
    return f"etc/nginx/sites-enabled/{slug}.conf"


def _site_target(slug: str) -> str:
    return f"../sites-available/{slug}.conf"


def enable_commands(slugs: list[str], out: Path) -> list[str]:
    """The commands, run as root on the box, that put installed verticals into service."""
    commands = []
    for slug in slugs:
        home = Path("/") / APPS_DIR / slug
        requirements = " ".join(shlex.quote(r) for r in _requirements(Path(out) / slug))
        commands += [
            f"test -x {home}/.venv/bin/python || python3 -m venv {home}/.venv",
            f"{home}/.venv/bin/pip install --quiet {requirements}",
        ]
    commands.append("systemctl daemon-reload")
    # `enable --now` would leave a service that already runs on its old code: a reload
    # migrates the database, then swaps the workers (see the unit's ExecReload); a
    # service that is not running yet is started instead.
    for slug in slugs:
        commands += [f"systemctl enable {slug}.service", f"systemctl reload-or-restart {slug}.service"]
    commands.append("nginx -t && systemctl reload nginx")
    return commands


def _generated_app(slug: str, out: Path) -> Path:
    if not SLUG_RE.match(slug):
        raise VgenError(f"{slug!r} is not a vertical slug (lower-case letter, then letters or digits)")
    app = out / slug
    if not (app / "app").is_dir():
        raise VgenError(f"no generated app at {app}: run `vgen generate {slug}` first")
    for name, _ in _deploy_files(slug):
        if not (app / "deploy" / name).is_file():
            raise VgenError(
                f"{app} has no deploy/{name}: regenerate it with `vgen generate {slug}`"
            )
    return app


def _check_no_static_users(slugs: list[str], root: Path) -> None:
    """Refuse a slug that names an existing system user (news, backup, games...).

    The units ask for DynamicUser=yes with User=<slug>; when a user of that name already
    exists, systemd runs the app as that static user instead, sharing its uid.
    """
    try:
        lines = (root / "etc/passwd").read_text(encoding="utf-8").splitlines()
    except OSError:
        return  # a scratch root without users: nothing to collide with
    users = {line.split(":", 1)[0] for line in lines if line and not line.startswith("#")}
    taken = sorted(set(slugs) & users)
    if taken:
        raise VgenError(
            f"{root / 'etc/passwd'} already has a user named {', '.join(taken)}: the app's "
            "service would run as that user instead of its own dynamic one; "
            "give the vertical another slug"
        )


def _check_not_the_systems(slugs: list[str], root: Path) -> None:
    """Refuse, before anything is written, to replace a file vgen did not lay.

    A slug such as ssh or nginx names a unit the box has: the app's unit in
    /etc/systemd/system would override it, and enabling it would replace that service.
    A cron.d file or an nginx site of the slug's name that is not vgen's is the admin's.
    """
    problems: list[Problem] = []
    seen: set[str] = set()  # /lib is often a link to /usr/lib: one problem per file
    for slug in slugs:
        for unit in (f"{slug}.service", f"{slug}-backup.service"):
            for folder in UNIT_DIRS:
                path = root / folder / unit
                real = os.path.realpath(path)
                if os.path.lexists(path) and real not in seen:
                    seen.add(real)
                    if not _laid_by_vgen(path, f"/etc/systemd/system/{unit}"):
                        problems.append(Problem(str(path), "", f"the box already has a unit {unit}, which the "
                                                "vertical's would replace; give the vertical another slug"))
        for target in (f"etc/cron.d/{slug}", f"etc/nginx/sites-available/{slug}.conf"):
            path = root / target
            if os.path.lexists(path) and not _laid_by_vgen(path, f"/{target}"):
                problems.append(Problem(str(path), "", "not laid by vgen; move it away, or give the vertical another slug"))
        link = root / _site_link(slug)
        if os.path.lexists(link) and not (link.is_symlink() and os.readlink(link) == _site_target(slug)):
            problems.append(Problem(str(link), "", f"not the link vgen makes (-> {_site_target(slug)}); "
                                    "move it away, or give the vertical another slug"))
    if problems:
        raise VgenError("vgen install would replace files it did not lay; nothing was written", problems)


def _laid_by_vgen(path: Path, installed_as: str) -> bool:
    """True when path is a plain file whose first line says vgen install puts it at
    installed_as, as every deploy file of the template does."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            first = f.readline(1024).decode("utf-8", "replace")
    except OSError:
        return False
    return re.match(r"# .*\binstalled as " + re.escape(installed_as) + r"(?![\w.-])", first) is not None


def _requirements(app: Path) -> list[str]:
    """What the app's venv needs: the dependencies its own pyproject.toml lists."""
    path = app / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise VgenError(f"{path}: cannot read the app's dependencies ({e})") from e
    requirements = project.get("dependencies") if isinstance(project, dict) else None
    if not (isinstance(requirements, list) and requirements and all(isinstance(r, str) for r in requirements)):
        raise VgenError(f"{path}: [project] dependencies must list what the app needs, "
                        "as the template writes them: regenerate the app or repair the file")
    return requirements


def _excluded(name: str) -> bool:
    return name in EXCLUDED or name.endswith(EXCLUDED_SUFFIXES)


def _mirror(source: Path, target: Path, journal: _Journal) -> list[Laid]:
    """Make target hold exactly source's files (minus the excluded ones)."""
    laid = []
    wanted: set[Path] = set()
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not _excluded(d))
        rel = Path(folder).relative_to(source)
        wanted.add(rel)
        for name in sorted(files):
            if _excluded(name):
                continue
            path = Path(folder) / name
            if path.is_symlink():
                raise VgenError(f"{path} is a symbolic link: install copies plain files only")
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            wanted.add(rel / name)
            laid.append(_lay_file(target / rel / name, path.read_bytes(), mode, journal))
    # Remove what the app no longer has, deepest first, leaving the excluded alone.
    for folder, dirs, files in os.walk(target, topdown=False):
        rel = Path(folder).relative_to(target)
        if any(_excluded(part) for part in rel.parts):
            continue
        for name in files:
            if not _excluded(name) and rel / name not in wanted:
                journal.before_change(Path(folder) / name)
                (Path(folder) / name).unlink()
                laid.append(Laid(Path(folder) / name, "removed"))
        if rel not in wanted and not any(Path(folder).iterdir()):
            journal.removed_dir(Path(folder), Path(folder).stat().st_mode & 0o777)
            Path(folder).rmdir()
            laid.append(Laid(Path(folder), "removed"))
    return laid


def _lay_file(path: Path, content: bytes, mode: int, journal: _Journal) -> Laid:
    """Write path atomically unless it already holds content with mode."""
    if path.is_file() and not path.is_symlink():
        if (path.stat().st_mode & 0o777) == mode and path.read_bytes() == content:
            return Laid(path, "unchanged")
        status = "updated"
    else:
        status = "created"
    _make_dirs(path.parent, journal)
    journal.before_change(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return Laid(path, status)


def _lay_symlink(path: Path, target: str, journal: _Journal) -> Laid:
    if path.is_symlink() and os.readlink(path) == target:
        return Laid(path, "unchanged")
    if path.exists() and not path.is_symlink():
        raise VgenError(f"{path} exists and is not a symbolic link: move it away first")
    status = "updated" if path.is_symlink() else "created"
    _make_dirs(path.parent, journal)
    journal.before_change(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return Laid(path, status)


def _make_dirs(path: Path, journal: _Journal) -> None:
    journal.before_mkdir(path)
    # 0755: the app's dynamic user and nginx (www-data) must read the app and its static files.
    old = os.umask(0o022)
    try:
        path.mkdir(parents=True, exist_ok=True)
    finally:
        os.umask(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
