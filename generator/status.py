"""`vgen status`: one row per vertical, read from the apps, their repos and their ports."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import answers, certs, gitrepo, placement, ports, render, spec
from .errors import VgenError
from .gitrepo import TEMPLATE_BRANCH
from .project import Project

# The backups an app keeps besides the ones `flask --app app backup` records in
# last.json: migrate's before it changes a database, restore's before it replaces one
# (template/app/migrate.py, backup.py). A file of that name is complete and verified:
# the app renames it into place only then.
SAFETY_BACKUP_RE = re.compile(r"^(pre-migrate|pre-restore)-.+-(\d{8}T\d{6}Z)(-\d+)?\.db$")


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
    last_backup_kind: str = ""  # "backup", "pre-migrate" or "pre-restore"
    # Under systemd on this host: "active", "idle" (stopped after an idle spell; its
    # socket starts it on the next connection), "failed" or "stopped"; "" when the
    # vertical is not installed here.
    service: str = ""
    # When the HTTPS certificate of the vertical's domain expires (certbot's, under the
    # root); None without a domain or a certificate.
    certificate_expires: dt.datetime | None = None
    # The host hosts.toml places it on; "local" without hosts.toml.
    host: str = "local"


def status(project: Project, timeout: float = 1.0, root: Path = Path("/")) -> list[Row]:
    """One row per vertical. With hosts.toml, each vertical's service state is read on
    its host over SSH (Ansible) and its health asked through that host's nginx."""
    verticals, _ = project.load_verticals()
    valid = {v.slug: v for v in verticals}
    registry = ports.load(project.ports_path)
    current = render.template_version(project.root, render.template_commit(project.root))
    # Apps without a spec are listed too; a copy such as apps/shop.bak is no vertical.
    apps = {p.name for p in project.out.glob("*") if spec.SLUG_RE.match(p.name) and (p / render.ANSWERS_FILE).exists()}
    slugs = sorted(set(project.slugs()) | apps)
    fleet = placement.load_or_fail(project.hosts_path, project.slugs())
    if fleet is None:
        services = service_states(slugs)
    else:
        services = remote_service_states(fleet, slugs, project.root / "build/status")

    def row(slug: str) -> Row:
        app = project.app_dir(slug)
        port = registry.ports.get(slug)
        recorded = answers.recorded(app)
        commit = recorded.get("_commit", "")
        spec_changed = None
        if recorded and slug in valid and port is not None:
            spec_changed = answers.questions(recorded) != answers.plain(valid[slug].answers(port))
        backup_time, backup_kind = last_backup(app, slug, root)
        domain = valid[slug].domain if slug in valid else recorded.get("domain")
        service = services.get(slug, "")
        host = fleet.host_of(slug) if fleet else None
        if service in ("idle", "unreachable", "not installed"):
            state = service  # asking /healthz would start an idle one: the socket answers for it
        elif host is not None:
            state = health_through_nginx(host.address, site_name(project, slug), timeout)
        else:
            state = health(port, timeout) if port else "no port"
        return Row(
            slug=slug, port=port,
            template=render.template_version(project.root, commit) if commit else "",
            template_current=commit == current,
            spec_changed=spec_changed,
            hand_edits=_hand_edits(app) if recorded else None,
            health=state,
            last_backup=backup_time, last_backup_kind=backup_kind,
            service=service,
            certificate_expires=certs.expiry(root, domain) if domain else None,
            host=host.name if host else "local",
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


def _systemctl_show(args: list[str]) -> str:
    """`systemctl show ARGS` on this machine; "" where systemd does not run it."""
    if not Path("/run/systemd/system").is_dir():  # systemd's own test for "booted with systemd"
        return ""
    try:
        done = subprocess.run(["systemctl", "show", *args], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return done.stdout


def service_states(slugs: list[str], root: Path = Path("/"),
                   show: Callable[[list[str]], str] = _systemctl_show) -> dict[str, str]:
    """Each vertical's state under this host's systemd, for the ones `vgen install` put
    here (its socket unit is in root/etc/systemd/system): one `systemctl show` for all.
    Empty where systemd does not run (a laptop, CI) or nothing is installed.

    show runs `systemctl show ARGS` and returns its output: on the host itself, by
    default; a test passes one that runs it inside its container.
    """
    installed = [slug for slug in slugs if (Path(root) / f"etc/systemd/system/{slug}.socket").is_file()]
    if not installed:
        return {}
    units = [f"{slug}{kind}" for slug in installed for kind in (".socket", ".service")]
    return states_from_show(installed, show(["--property=Id,ActiveState,Result,LoadState", *units]))


def states_from_show(slugs: list[str], output: str) -> dict[str, str]:
    """Each vertical's state from `systemctl show` of its socket and service units:
    "active", "idle", "failed", "stopped", or "not installed" when systemd has no
    socket unit of that name; {} when the output holds no unit at all."""
    seen: dict[str, dict[str, str]] = {}
    for block in output.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in props:
            seen[props["Id"]] = props
    if not seen:
        return {}
    states = {}
    for slug in slugs:
        sock, service = seen.get(f"{slug}.socket", {}), seen.get(f"{slug}.service", {})
        if sock.get("LoadState") == "not-found":
            states[slug] = "not installed"
        elif "failed" in (sock.get("ActiveState"), service.get("ActiveState")):
            states[slug] = "failed"
        elif service.get("ActiveState") in ("active", "reloading", "activating"):
            states[slug] = "active"
        elif sock.get("ActiveState") == "active":
            states[slug] = "idle"
        else:
            states[slug] = "stopped"
    return states


def remote_service_states(fleet: placement.Fleet, slugs: list[str], build: Path) -> dict[str, str]:
    """Each vertical's state on the host hosts.toml places it on, read over SSH with
    one ad-hoc Ansible command for every host at once (`systemctl show` of its units);
    "unreachable" for the verticals of a host that does not answer."""
    from . import deploy

    hosts = {}
    for name in fleet.hosts:
        on_host = fleet.verticals_on(name, slugs)
        if on_host:
            units = " ".join(f"{slug}{kind}" for slug in on_host for kind in (".socket", ".service"))
            hosts[name] = {**deploy.reach_vars(fleet.hosts[name]), "vgen_units": units}
    if not hosts:
        return {}
    results, _ = deploy.ad_hoc(hosts, "ansible.builtin.command",
                               "systemctl show --property=Id,ActiveState,Result,LoadState {{ vgen_units }}",
                               build, by="vgen status")
    states = {}
    for name, result in results.items():
        on_host = fleet.verticals_on(name, slugs)
        if result.get("unreachable") or "stdout" not in result:
            states.update({slug: "unreachable" for slug in on_host})
        else:
            states.update(states_from_show(on_host, result["stdout"]))
    return states


def site_name(project: Project, slug: str) -> str:
    """The name the vertical's nginx site answers to."""
    from .move import server_name

    try:
        return server_name(project.app_dir(slug), slug)
    except VgenError:
        return f"{slug}.localhost"


def health(port: int, timeout: float) -> str:
    """The app's health on the port: ok when /healthz answers 200, down when nothing
    answers, else the HTTP status it answers with."""
    return _health(urllib.request.Request(f"http://127.0.0.1:{port}/healthz"), timeout)


def health_through_nginx(address: str, name: str, timeout: float) -> str:
    """The app's health as its host's nginx serves it under its server name."""
    return _health(urllib.request.Request(f"http://{address}/healthz", headers={"Host": name}), timeout)


def _health(request: urllib.request.Request, timeout: float) -> str:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return "ok" if response.status == 200 else str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError:
        return "down"


def deployed(project: Project | None, root: Path = Path("/")) -> dict[str, Path]:
    """The verticals there is something to watch over, each with its app's folder: the
    apps generated in the project's output folder, and the releases `vgen install` laid
    under root (root/srv/vgen/<slug>/current). A spec that was never generated is not
    one of them: it has no data yet."""
    found: dict[str, Path] = {}
    srv = Path(root) / "srv/vgen"
    for current in sorted(srv.glob("*/current")) if srv.is_dir() else []:
        slug = current.parent.name
        if spec.SLUG_RE.match(slug) and (current / "app").is_dir():
            found[slug] = current
    if project is not None:
        slugs = set(project.slugs()) | {p.name for p in project.out.glob("*")}
        for slug in sorted(slugs):
            app = project.app_dir(slug)
            if spec.SLUG_RE.match(slug) and (app / render.ANSWERS_FILE).exists():
                found[slug] = app
    return dict(sorted(found.items()))


def data_dirs(app: Path, slug: str, root: Path = Path("/")) -> list[Path]:
    """Where the app's DATA_DIR may be, in the order vgen looks: in development the
    app's instance folder, on a host its systemd state directory."""
    return [Path(app) / "instance", Path(root) / "var/lib" / slug]


def last_record(app: Path, slug: str, root: Path = Path("/")) -> dict:
    """The record of the app's last `flask --app app backup` run (backups/last.json in
    the first data folder that has one), or {}."""
    for data_dir in data_dirs(app, slug, root):
        try:
            record = json.loads((data_dir / "backups/last.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return {}


def settings(slug: str, root: Path = Path("/")) -> dict[str, str]:
    """The vertical's settings file, root/etc/vgen/<slug>.env (systemd's
    EnvironmentFile= format: KEY=VALUE lines, # comments), as a dict; {} when missing."""
    try:
        text = (Path(root) / "etc/vgen" / f"{slug}.env").read_text(encoding="utf-8")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def last_backup(app: Path, slug: str, root: Path = Path("/")) -> tuple[str, str]:
    """(time, kind) of the app's latest verified backup, or ("", ""): the last good one
    `flask --app app backup` recorded in last.json ("backup"), or a backup migrate or
    restore took first ("pre-migrate", "pre-restore"), whichever is newer. Times are
    UTC, as 2026-11-25T03:17:00Z."""
    found = []
    for data_dir in data_dirs(app, slug, root):
        backups = data_dir / "backups"
        try:
            record = json.loads((backups / "last.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        good = record.get("last_good") or (record if record.get("verified") else None)
        if isinstance(good, dict) and good.get("time"):
            found.append((str(good["time"]), "backup"))
        try:
            names = [p.name for p in backups.iterdir()]
        except OSError:
            names = []
        for name in names:
            match = SAFETY_BACKUP_RE.match(name)
            if match:
                taken = dt.datetime.strptime(match.group(2), "%Y%m%dT%H%M%SZ")
                found.append((taken.strftime("%Y-%m-%dT%H:%M:%SZ"), match.group(1)))
        if found:
            return max(found)
    return "", ""
