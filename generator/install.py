"""`vgen install`: lay verticals under a host's root file system, as releases.

For a vertical `cheesemaking` generated in OUT/cheesemaking, install(["cheesemaking"],
root, OUT, wheelhouse) writes, under ROOT:

    srv/vgen/cheesemaking/releases/ID/            the app as one release (without instance/,
                                                  .venv, .git), with requirements.txt: the
                                                  pinned wheels its venv gets
    srv/vgen/wheelhouse/*.whl                     those wheels, for an offline pip install
    usr/local/sbin/vgen-activate                  puts releases into service (activate.py)
    etc/systemd/system/cheesemaking.socket        holds the port, starts the service
    etc/systemd/system/cheesemaking.service       gunicorn under systemd
    etc/systemd/system/cheesemaking-migrate.service   the schema, before the first start
    etc/systemd/system/cheesemaking-backup.service    the nightly backup (oneshot)
    etc/cron.d/cheesemaking                       starts the backup unit each night
    etc/nginx/sites-available/cheesemaking.conf   port 80: the app, the ACME challenge, and
                                                  once HTTPS is on, the redirect to it
    etc/nginx/sites-enabled/cheesemaking.conf -> ../sites-available/cheesemaking.conf
    etc/nginx/sites-available/cheesemaking-https.conf   port 443, enabled by certbot's deploy
                                                  hook once the certificate exists (certs.py)
    var/www/vgen-acme/                            certbot's webroot for the ACME challenge
    etc/vgen/cheesemaking.env                     the settings file, once, then the admin's

The release ID is a hash of what the release holds, so the same app gives the same
release: installing it again writes nothing. Nothing here switches what serves: the
printed `vgen-activate SLUG=ID` does that on the host (switching
srv/vgen/SLUG/current, migrating, reloading, rolling back when the release fails).

Every file is written atomically and only when its content or mode differs. A file vgen
did not lay is never replaced: a slug such as `ssh`, `cron` or `nginx` whose unit exists
on the box (in /etc/systemd/system, /lib/systemd/system or /usr/lib/systemd/system), or
a cron or nginx file of that name, stops the install before anything is written. vgen
knows its own files by their first line, which says where `vgen install` puts them
("# Shop: ..., installed as /etc/cron.d/shop ..."). When a step fails half-way (a full
disk), everything laid so far is taken back.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import answers, certs, wheelhouse
from .errors import Problem, VgenError
from .fsutil import check_folder
from .spec import SLUG_RE
from .wheelhouse import LOCK, Wheelhouse

APPS_DIR = Path("srv/vgen")  # under the root: one folder per vertical, with its releases
WHEELHOUSE_DIR = APPS_DIR / "wheelhouse"
ACTIVATE = Path("usr/local/sbin/vgen-activate")
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


@dataclass
class Installed:
    laid: list[Laid] = field(default_factory=list)
    releases: dict[str, str] = field(default_factory=dict)  # slug -> release ID
    domains: dict[str, str] = field(default_factory=dict)  # slug -> its spec's domain, if any

    @property
    def changed(self) -> list[Laid]:
        return [item for item in self.laid if item.status != "unchanged"]


def install(slugs: list[str], root: Path, out: Path, wheelhouse: Wheelhouse) -> Installed:
    """Lay each vertical's release, units, cron file and nginx site under root."""
    root, out = Path(root), Path(out)
    check_folder(root, "--root")
    if not slugs:
        raise VgenError("no vertical to install: name one or more, or use --all")
    apps = [_generated_app(slug, out) for slug in slugs]
    for app in apps:
        _requirements(app)  # a broken pyproject.toml stops the install before any write
    _check_no_static_users(slugs, root)
    _check_not_the_systems(slugs, root)
    installed = Installed()
    laid = installed.laid
    journal = _Journal()
    try:
        for wheel in wheelhouse.wheels():
            laid.append(_lay_file(root / WHEELHOUSE_DIR / wheel.name, wheel.read_bytes(), 0o644, journal))
        laid.append(_lay_file(root / ACTIVATE, Path(__file__).with_name("activate.py").read_bytes(), 0o755, journal))
        laid.append(_lay_dir(root / certs.WEBROOT, journal))
        for slug, app in zip(slugs, apps):
            files = _release_files(app, wheelhouse.requirements)
            release = installed.releases[slug] = release_id(files)
            laid += _lay_tree(files, root / APPS_DIR / slug / "releases" / release, journal)
            deploy = app / "deploy"
            for source, target in _deploy_files(slug):
                laid.append(_lay_file(root / target, (deploy / source).read_bytes(), 0o644, journal))
            laid.append(_lay_symlink(root / _site_link(slug), _site_target(slug), journal))
            laid.append(_lay_once(root / f"etc/vgen/{slug}.env", settings_file(slug), 0o600, journal))
            domain = answers.recorded(app).get("domain")
            if domain:
                installed.domains[slug] = domain
    except OSError as exc:
        journal.undo()
        where = exc.filename if exc.filename is not None else root
        raise VgenError(f"{where}: {exc.strerror or exc}; vgen install took back what it had laid "
                        f"under {root}, so nothing changed there") from None
    except BaseException:
        journal.undo()
        raise
    return installed


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
        (f"{slug}.socket", f"etc/systemd/system/{slug}.socket"),
        (f"{slug}.service", f"etc/systemd/system/{slug}.service"),
        (f"{slug}-migrate.service", f"etc/systemd/system/{slug}-migrate.service"),
        (f"{slug}-backup.service", f"etc/systemd/system/{slug}-backup.service"),
        # cron ignores /etc/cron.d files whose names contain a dot.
        (f"{slug}.cron", f"etc/cron.d/{slug}"),
        (f"{slug}.nginx.conf", f"etc/nginx/sites-available/{slug}.conf"),
        (f"{slug}-https.nginx.conf", f"etc/nginx/sites-available/{slug}-https.conf"),
    ]


def _site_link(slug: str) -> str:
    return f"etc/nginx/sites-enabled/{slug}.conf"


def _site_target(slug: str) -> str:
    return f"../sites-available/{slug}.conf"


def wheels_for(slugs: list[str], root: Path, out: Path) -> Wheelhouse:
    """The wheelhouse the verticals' venvs need, for the Python of the host at root."""
    requirements = sorted({r for slug in slugs for r in _requirements(_generated_app(slug, Path(out)))})
    python, machine = wheelhouse.host_python(Path(root))
    return wheelhouse.build(requirements, python, machine)


def enable_commands(releases: dict[str, str]) -> list[str]:
    """The command, run as root on the host, that puts the installed releases into
    service: vgen-activate reloads systemd, builds each release's venv from the
    wheelhouse, switches `current`, migrates, enables and starts the socket (or reloads
    a running service), and rolls a failing release back (generator/activate.py)."""
    pairs = " ".join(f"{slug}={release}" for slug, release in releases.items())
    return [f"/{ACTIVATE} {pairs}"]


def release_id(files: list[tuple[str, int, bytes]]) -> str:
    """A release's name: a hash of its paths, modes and contents."""
    digest = hashlib.sha256()
    for rel, mode, content in files:
        digest.update(f"{rel}\0{mode:o}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:12]


def settings_file(slug: str) -> bytes:
    return f"""# Settings of {slug}, read by its units (systemd's EnvironmentFile= format).
# vgen install wrote this file once and never changes it: it is yours.
#
# Stop the app after this many seconds without a request (the socket starts it again
# on the next connection); 0 keeps it running. Default 900.
#IDLE_STOP_SECONDS=900
#
# Sign sessions with this key instead of the one kept in /var/lib/{slug}/secret_key.
#SECRET_KEY=
#
# The app's own address, for the links in its mails (else the request's host).
#BASE_URL=https://{slug}.example.com
#
# Outgoing mail; without SMTP_HOST, mails go to /var/lib/{slug}/outbox/*.eml.
# (The service has no network of its own: a relay on this host needs
#  `systemctl edit {slug}.service` with PrivateNetwork=no and RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6.)
#SMTP_HOST=
#SMTP_PORT=587
#SMTP_STARTTLS=1
#SMTP_USER=
#SMTP_PASSWORD=
#MAIL_FROM=
#
# Off-site copies of each nightly backup, through rclone: the remote (defined in
# /etc/vgen/rclone.conf) and this vertical's folder there. The backup unit needs the
# network and that config first: `systemctl edit {slug}-backup.service`, as its comments say.
# `vgen drill {slug}` fetches the latest copy and checks it.
#BACKUP_OFFSITE=offsite:my-bucket/{slug}
""".encode()


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
        for unit in (f"{slug}.socket", f"{slug}.service", f"{slug}-migrate.service", f"{slug}-backup.service"):
            for folder in UNIT_DIRS:
                path = root / folder / unit
                real = os.path.realpath(path)
                if os.path.lexists(path) and real not in seen:
                    seen.add(real)
                    if not _laid_by_vgen(path, f"/etc/systemd/system/{unit}"):
                        problems.append(Problem(str(path), "", f"the box already has a unit {unit}, which the "
                                                "vertical's would replace; give the vertical another slug"))
        for target in (f"etc/cron.d/{slug}", f"etc/nginx/sites-available/{slug}.conf",
                       f"etc/nginx/sites-available/{slug}-https.conf"):
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


def _release_files(app: Path, requirements: str) -> list[tuple[str, int, bytes]]:
    """(path, mode, content) of every file of the release: the app's files, but for the
    excluded ones (data, venv, caches), and the pinned requirements its venv gets."""
    files = []
    for folder, dirs, names in os.walk(app):
        dirs[:] = sorted(d for d in dirs if not _excluded(d))
        for name in sorted(names):
            path = Path(folder) / name
            if _excluded(name):
                continue
            if path.is_symlink():
                raise VgenError(f"{path} is a symbolic link: install copies plain files only")
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            files.append((path.relative_to(app).as_posix(), mode, path.read_bytes()))
    files.append((LOCK, 0o644, requirements.encode()))
    return sorted(files)


def _lay_tree(files: list[tuple[str, int, bytes]], target: Path, journal: _Journal) -> list[Laid]:
    """Make target hold exactly these files (the excluded ones, such as .venv, aside)."""
    laid = [_lay_file(target / rel, content, mode, journal) for rel, mode, content in files]
    wanted = {Path(rel) for rel, _, _ in files}
    wanted |= {parent for rel in wanted for parent in rel.parents}
    # Remove what the release should not hold, deepest first (a hand-made change).
    for folder, dirs, names in os.walk(target, topdown=False):
        rel = Path(folder).relative_to(target)
        if any(_excluded(part) for part in rel.parts):
            continue
        for name in names:
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


def _lay_once(path: Path, content: bytes, mode: int, journal: _Journal) -> Laid:
    """Write path unless it exists: a file that is the admin's once laid."""
    if os.path.lexists(path):
        return Laid(path, "unchanged")
    return _lay_file(path, content, mode, journal)


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


def _lay_dir(path: Path, journal: _Journal) -> Laid:
    if path.is_dir():
        return Laid(path, "unchanged")
    _make_dirs(path, journal)
    return Laid(path, "created")


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
