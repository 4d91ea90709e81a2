"""The deploy files of a generated app, checked with the real tools.

systemd-analyze (package systemd), nginx (package nginx) and cron's syntax. The units are
verified under a scratch root laid by generator.install, the way `vgen install --root`
lays them: systemd-analyze verify checks that each Exec*= program exists, and those
(the app's .venv) only exist once the app is deployed, so the scratch root gets stub
programs at those paths, plus a copy of the host's unit folder for the units ours
depend on (systemd-analyze cannot follow its absolute symlinks from inside a root).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from generator.install import enable_commands, install
from generator.spec import backup_time

from conftest import EXAMPLES, example_answers, render_app, sample_answers

# One worker for the whole file: its module fixtures generate six apps, once.
pytestmark = pytest.mark.xdist_group("deploy")

REPO = Path(__file__).resolve().parent.parent
# Real tools, installed by .ci/run: a missing one fails the tests that need it, loudly.
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze (apt-get install systemd)"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx (apt-get install nginx)")


@pytest.fixture(scope="module")
def apps(template_repo, tmp_path_factory):
    """Every example vertical and the every-type sample, generated into one folder."""
    out = tmp_path_factory.mktemp("apps")
    render_app(template_repo, sample_answers(), out / "sample")
    for slug in EXAMPLES:
        render_app(template_repo, example_answers(slug), out / slug)
    return out


@pytest.fixture(scope="module")
def root(apps, wheels, tmp_path_factory):
    """A scratch root with every app installed, ready for systemd-analyze --root."""
    root = tmp_path_factory.mktemp("root")
    install(["sample", *EXAMPLES], root, apps, wheels)
    prepare_for_verify(root)
    return root


def prepare_for_verify(root: Path) -> None:
    """What systemd-analyze verify --root needs besides the installed units: systemd's
    own units, and a stub for each program an installed unit runs."""
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for unit in (root / "etc/systemd/system").glob("*.service"):
        for program in exec_programs(unit.read_text()):
            stub = root / program.lstrip("/")
            if not stub.exists():
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)


def exec_programs(unit_text: str) -> list[str]:
    """The programs a unit's Exec*= lines run (without systemd's -@:+! prefixes)."""
    programs = []
    for match in re.finditer(r"^Exec\w+=(\S+)", unit_text, re.M):
        programs.append(match.group(1).lstrip("-@:+!"))
    return programs


SERVICES = [f"{slug}{kind}.service" for slug in ["sample", *EXAMPLES] for kind in ("", "-migrate", "-backup")]
UNITS = SERVICES + [f"{slug}.socket" for slug in ["sample", *EXAMPLES]]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_clean(root, unit):
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
    )
    # verify exits 0 on unknown keys too, warning on stderr: clean means no output at all.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_unit_security_rating(root, unit):
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", f"--root={root}", unit],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 0.9, done.stdout


def test_units_run_the_current_release(apps):
    deploy = apps / "sample/deploy"
    service, migrate, backup = (
        (deploy / name).read_text() for name in ("sample.service", "sample-migrate.service", "sample-backup.service")
    )
    for unit in (service, migrate, backup):
        assert "DynamicUser=yes" in unit and "User=sample\n" in unit
        assert "StateDirectory=sample\n" in unit and "Environment=DATA_DIR=%S/sample\n" in unit
        assert "WorkingDirectory=/srv/vgen/sample/current\n" in unit
    assert "Type=notify" in service and "Restart=on-failure" in service
    assert "Requires=sample.socket sample-migrate.service\n" in service
    assert "ExecStartPre" not in service  # the migrate unit runs once per boot instead
    assert re.findall(r"^ExecStart=(.*)$", migrate, re.M) == [
        "/srv/vgen/sample/current/.venv/bin/flask --app app migrate",
        "/srv/vgen/sample/current/.venv/bin/flask --app app healthz",
    ]
    assert "RemainAfterExit=yes" in migrate
    assert "ExecStart=/srv/vgen/sample/current/.venv/bin/flask --app app backup" in backup
    socket_unit = (deploy / "sample.socket").read_text()
    assert "ListenStream=127.0.0.1:8123\n" in socket_unit and "WantedBy=sockets.target" in socket_unit


def test_reload_migrates_before_it_swaps_the_workers(apps):
    """`systemctl reload` after an update must not run the new code on the old schema:
    systemd runs the ExecReload lines in order and stops at the first that fails."""
    service = (apps / "sample/deploy/sample.service").read_text()
    assert re.findall(r"^ExecReload=(.*)$", service, re.M) == [
        "/srv/vgen/sample/current/.venv/bin/flask --app app migrate",
        "/srv/vgen/sample/current/.venv/bin/flask --app app healthz",
        "/bin/kill -s HUP $MAINPID",
    ]


# -- cron -------------------------------------------------------------------------

CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_field_ok(field: str, lo: int, hi: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        numbers = [first] + ([last] if last else [])
        if not all(n.isdigit() and lo <= int(n) <= hi for n in numbers):
            return False
    return True


def cron_jobs(text: str) -> list[list[str]]:
    """The job lines of an /etc/cron.d file: five time fields, a user, the command."""
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not a cron.d job line: {line!r}"
        jobs.append(fields)
    return jobs


def test_cron_file_is_valid_and_starts_the_backup_unit(apps, root):
    cron = root / "etc/cron.d/sample"
    assert "." not in cron.name and oct(cron.stat().st_mode & 0o777) == "0o644"
    [job] = cron_jobs(cron.read_text())
    for field, (lo, hi) in zip(job[:5], CRON_RANGES):
        assert cron_field_ok(field, lo, hi), job
    assert job[:2] == ["17", "3"]  # backup_minute, backup_hour of the sample answers
    assert job[5] == "root"  # systemctl start needs root; the unit itself runs as the app
    program, *args = job[6].split()
    assert os.path.isabs(program) and os.access(program, os.X_OK), program
    assert args == ["start", "sample-backup.service"]
    assert (root / "etc/systemd/system/sample-backup.service").is_file()


def test_two_verticals_back_up_at_different_minutes(root):
    times = {}
    for slug in ("sample", "honeybees"):
        [job] = cron_jobs((root / f"etc/cron.d/{slug}").read_text())
        times[slug] = (int(job[1]), int(job[0]))
    assert times["honeybees"] == backup_time("honeybees")
    assert times["sample"] != times["honeybees"]


# -- install ----------------------------------------------------------------------


def test_install_lays_a_release_and_is_idempotent(apps, wheels, tmp_path):
    (apps / "sample" / "instance").mkdir(exist_ok=True)
    (apps / "sample" / "instance" / "sample.db").write_text("customer data")
    first = install(["sample"], tmp_path, apps, wheels)
    assert {x.status for x in first.laid} == {"created"}
    release = first.releases["sample"]
    assert re.fullmatch(r"[0-9a-f]{12}", release)
    laid = {x.path.relative_to(tmp_path).as_posix() for x in first.laid}
    home = f"srv/vgen/sample/releases/{release}"
    for path in (
        f"{home}/app/__init__.py",
        f"{home}/gunicorn.conf.py",
        f"{home}/requirements.txt",
        "usr/local/sbin/vgen-activate",
        "etc/systemd/system/sample.socket",
        "etc/systemd/system/sample.service",
        "etc/systemd/system/sample-migrate.service",
        "etc/systemd/system/sample-backup.service",
        "etc/cron.d/sample",
        "etc/nginx/sites-available/sample.conf",
        "etc/nginx/sites-enabled/sample.conf",
        "etc/nginx/sites-available/sample-https.conf",  # enabled by certbot's deploy hook
        "var/www/vgen-acme",  # certbot's webroot
        "etc/vgen/sample.env",
    ):
        assert path in laid
    assert not os.path.lexists(tmp_path / "etc/nginx/sites-enabled/sample-https.conf")
    assert not any("/instance" in p for p in laid)
    # The venv gets exactly the wheels shipped beside it, pinned.
    wheels_laid = sorted(p.name for p in (tmp_path / "srv/vgen/wheelhouse").iterdir())
    assert wheels_laid == [w.name for w in wheels.wheels()] and any(n.startswith("flask-") for n in wheels_laid)
    pins = (tmp_path / home / "requirements.txt").read_text().split()
    assert len(pins) == len(wheels_laid) and all("==" in pin for pin in pins)
    assert os.access(tmp_path / "usr/local/sbin/vgen-activate", os.X_OK)
    assert oct((tmp_path / "etc/vgen/sample.env").stat().st_mode & 0o777) == "0o600"
    link = tmp_path / "etc/nginx/sites-enabled/sample.conf"
    assert os.readlink(link) == "../sites-available/sample.conf" and link.is_file()
    # Nothing switches what serves: that is vgen-activate's, on the host.
    assert not os.path.lexists(tmp_path / "srv/vgen/sample/current")

    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in tmp_path.rglob("*") if not p.is_symlink()}
    second = install(["sample"], tmp_path, apps, wheels)
    assert second.releases == first.releases and second.changed == []
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in tmp_path.rglob("*") if not p.is_symlink()}
    assert after == before

    # The settings file is the admin's once laid; a file added to a release goes, and
    # the venv link the host made stays.
    (tmp_path / "etc/vgen/sample.env").write_text("IDLE_STOP_SECONDS=60\n")
    (tmp_path / home / "app/stale.py").write_text("")
    os.symlink("/srv/vgen/venvs/x", tmp_path / home / ".venv")
    third = install(["sample"], tmp_path, apps, wheels)
    assert [(x.path.name, x.status) for x in third.changed] == [("stale.py", "removed")]
    assert os.path.islink(tmp_path / home / ".venv")
    assert (tmp_path / "etc/vgen/sample.env").read_text() == "IDLE_STOP_SECONDS=60\n"


def test_a_changed_app_is_a_new_release_beside_the_old(apps, wheels, tmp_path):
    first = install(["sample"], tmp_path, apps, wheels).releases["sample"]
    readme = apps / "sample/README.md"
    text = readme.read_text()
    try:
        readme.write_text(text + "\nA change.\n")
        second = install(["sample"], tmp_path, apps, wheels).releases["sample"]
    finally:
        readme.write_text(text)
    assert second != first
    releases = tmp_path / "srv/vgen/sample/releases"
    assert sorted(p.name for p in releases.iterdir()) == sorted([first, second])
    assert (releases / second / "README.md").read_text().endswith("A change.\n")


def test_install_refuses_a_missing_app(apps, wheels, tmp_path):
    from generator.errors import VgenError

    with pytest.raises(VgenError, match="vgen generate nosuchapp"):
        install(["nosuchapp"], tmp_path, apps, wheels)
    assert not any(tmp_path.iterdir())


def test_install_refuses_a_slug_that_is_a_system_user(apps, wheels, tmp_path):
    from generator.errors import VgenError

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nsample:x:9:9::/:/usr/sbin/nologin\n")
    with pytest.raises(VgenError, match="already has a user named sample"):
        install(["sample"], tmp_path, apps, wheels)


SYSTEM_FILES = [
    "etc/systemd/system/sample.service",
    "etc/systemd/system/sample.socket",
    "usr/lib/systemd/system/sample-migrate.service",
    "lib/systemd/system/sample.service",
    "usr/lib/systemd/system/sample.service",
    "usr/lib/systemd/system/sample-backup.service",
    "etc/cron.d/sample",
    "etc/nginx/sites-available/sample.conf",
    "etc/nginx/sites-available/sample-https.conf",
    "etc/nginx/sites-enabled/sample.conf",
]


def tree(root: Path) -> dict:
    """Every path under root with its content (a link's target; None for a folder)."""
    def content(p: Path):
        if p.is_symlink():
            return os.readlink(p)
        return p.read_bytes() if p.is_file() else None

    return {p.relative_to(root).as_posix(): content(p) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("path", SYSTEM_FILES)
def test_install_never_replaces_a_file_it_did_not_lay(apps, wheels, tmp_path, path):
    """A slug such as ssh, cron or nginx: its unit, cron file or site is the system's own."""
    from generator.errors import VgenError

    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    before = tree(tmp_path)
    with pytest.raises(VgenError) as info:
        install(["sample"], tmp_path, apps, wheels)
    assert str(info.value).startswith("vgen install would replace files it did not lay; nothing was written")
    assert f"  {tmp_path / path}: " in str(info.value)
    assert tree(tmp_path) == before


def test_install_never_repoints_a_site_link_it_did_not_make(apps, wheels, tmp_path):
    from generator.errors import VgenError

    link = tmp_path / "etc/nginx/sites-enabled/sample.conf"
    link.parent.mkdir(parents=True)
    os.symlink("/etc/nginx/sites-available/default", link)
    with pytest.raises(VgenError, match="nothing was written"):
        install(["sample"], tmp_path, apps, wheels)
    assert os.readlink(link) == "/etc/nginx/sites-available/default"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["etc", "nginx", "sample.conf", "sites-enabled"]


def test_install_updates_the_files_it_laid(apps, wheels, tmp_path):
    """vgen's own files are known by their header (where vgen install puts them): an
    app regenerated since replaces them."""
    install(["sample"], tmp_path, apps, wheels)
    deploy = ["etc/systemd/system/sample.service", "etc/systemd/system/sample-backup.service",
              "etc/systemd/system/sample.socket", "etc/systemd/system/sample-migrate.service",
              "etc/cron.d/sample", "etc/nginx/sites-available/sample.conf"]
    for path in deploy:
        with (tmp_path / path).open("a") as f:
            f.write("# laid by an older template\n")
    changed = install(["sample"], tmp_path, apps, wheels).changed
    assert sorted(x.path.relative_to(tmp_path).as_posix() for x in changed) == sorted(deploy)
    assert {x.status for x in changed} == {"updated"}


def test_install_takes_back_what_it_laid_when_a_later_step_fails(apps, wheels, tmp_path):
    """sample is laid (a unit of it updated), then cheesemaking's folder cannot be made:
    everything is put back as it was, the updated unit included."""
    from generator.errors import VgenError

    release = install(["sample"], tmp_path, apps, wheels).releases["sample"]
    unit = tmp_path / "etc/systemd/system/sample.service"
    unit.write_text(unit.read_text() + "# laid by an older template\n")
    (tmp_path / f"srv/vgen/sample/releases/{release}/app/stale.py").write_text("gone from the app\n")
    (tmp_path / "srv/vgen/cheesemaking").write_text("a plain file where the app would go\n")
    before = tree(tmp_path)
    with pytest.raises(VgenError) as info:
        install(["sample", "cheesemaking"], tmp_path, apps, wheels)
    assert str(info.value).startswith(f"{tmp_path / 'srv/vgen/cheesemaking'}")
    assert f"vgen install took back what it had laid under {tmp_path}, so nothing changed there" in str(info.value)
    assert tree(tmp_path) == before


def run_install(template_repo, apps, root):
    from click.testing import CliRunner

    from generator import cli

    return CliRunner().invoke(cli.main, ["--project", str(template_repo), "install", "sample",
                                         "--root", str(root), "--out", str(apps)])


def test_install_under_a_plain_file_is_one_error_line(template_repo, apps, tmp_path):
    (tmp_path / "file").write_text("not a folder\n")
    result = run_install(template_repo, apps, tmp_path / "file" / "root")
    assert result.exit_code == 1
    assert result.output == f"Error: --root {tmp_path}/file/root is not a folder ({tmp_path}/file is a file)\n"
    assert (tmp_path / "file").read_text() == "not a folder\n"


def test_install_where_it_may_not_write_is_one_error_line(template_repo, apps, tmp_path):
    """A folder without write permission; as root, where permissions do not stop
    writes, a folder under /proc, which no one can make."""
    if os.geteuid() == 0:
        root = Path(f"/proc/vgen-test-{os.getpid()}/root")
        expected = f"Error: /proc/vgen-test-{os.getpid()}: No such file or directory; vgen install took back"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        root = locked / "root"
        expected = f"Error: --root {root}: permission denied ({locked})\n"
    result = run_install(template_repo, apps, root)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(expected), result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1


def test_enable_commands_name_each_release():
    assert enable_commands({"sample": "0123456789ab", "honeybees": "ba9876543210"}) == [
        "/usr/local/sbin/vgen-activate sample=0123456789ab honeybees=ba9876543210"
    ]


# -- nginx and gunicorn -----------------------------------------------------------


def deny_write_execute() -> None:
    """In the child before exec: what MemoryDenyWriteExecute=yes enforces, via prctl.

    PR_SET_MDWE (Linux 6.3+) is inherited across fork and exec, so gunicorn and its
    workers run under the same rule as under the unit. On older kernels: no-op.
    """
    import ctypes

    ctypes.CDLL(None).prctl(65, 1, 0, 0, 0)  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(tmp: Path, site: Path) -> Path:
    """A minimal nginx.conf that runs without root, including the given site."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (tmp / name).mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the tmp files
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {tmp}/logs/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
"""
    )
    return conf


def local_site(app: Path, tmp: Path, listen: int, upstream: int) -> Path:
    """The generated site, changed only for the ports and the paths of this machine."""
    text = (app / "deploy" / f"{app.name}.nginx.conf").read_text()
    text = text.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    text = text.replace("listen [::]:80;\n", "")
    text = re.sub(r"proxy_pass http://127\.0\.0\.1:\d+;", f"proxy_pass http://127.0.0.1:{upstream};", text)
    text = text.replace(f"/srv/vgen/{app.name}/current/", f"{app}/")
    text = text.replace("/var/log/nginx/", f"{tmp}/logs/")
    site = tmp / "site.conf"
    site.write_text(text)
    return site


def nginx_test(conf: Path, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NGINX, "-t", "-q", "-e", str(tmp / "logs" / "error.log"), "-p", str(tmp), "-c", str(conf)],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("slug", ["sample", *EXAMPLES])
def test_nginx_t_is_clean(apps, tmp_path, slug):
    site = local_site(apps / slug, tmp_path, free_port(), 8123)
    done = nginx_test(nginx_conf(tmp_path, site), tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_nginx_site_without_domain(template_repo, tmp_path):
    app = render_app(template_repo, sample_answers(domain=""), tmp_path / "sample")
    text = (app / "deploy/sample.nginx.conf").read_text()
    assert re.search(r"^\s*server_name sample\.localhost;", text, re.M)


def wait_for(port: int, path: str = "/healthz", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _ = get(port, path)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers 200 on 127.0.0.1:{port}{path}")
        time.sleep(0.2)


def get(port: int, path: str, host: str = "sample.example.com"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def gunicorn_app(apps, tmp_path):
    """The sample app under gunicorn with its generated gunicorn.conf.py; yields the port."""
    app = apps / "sample"
    port = free_port()
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), GUNICORN_BIND=f"127.0.0.1:{port}")
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
        cwd=app,
        env=env,
        preexec_fn=deny_write_execute,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "gunicorn.log", "w"),
    )
    try:
        wait_for(port)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def nginx_serving(app: Path, tmp: Path, upstream: int):
    """nginx running the app's generated site in front of upstream; yields its port."""
    tmp.mkdir()
    listen = free_port()
    conf = nginx_conf(tmp, local_site(app, tmp, listen, upstream))
    assert nginx_test(conf, tmp).returncode == 0
    nginx = subprocess.Popen(
        [NGINX, "-e", str(tmp / "logs/error.log"), "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        yield listen
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)


@pytest.mark.slow
def test_nginx_proxies_to_the_app_and_serves_static(apps, tmp_path, gunicorn_app):
    app = apps / "sample"
    with nginx_serving(app, tmp_path / "nginx", gunicorn_app) as listen:
        wait_for(listen)
        status, headers, body = get(listen, "/login")
        assert status == 200 and b"<form" in body
        assert headers["Server"].startswith("nginx")
        assert "Content-Security-Policy" in headers  # the page came from the app

        status, headers, body = get(listen, "/static/htmx.min.js")
        assert status == 200
        assert body == (app / "app/static/htmx.min.js").read_bytes()
        assert "Content-Security-Policy" not in headers  # served by nginx, not the app
        assert headers["Cache-Control"] == "public, max-age=86400"
        assert "ETag" in headers and "Last-Modified" in headers


@pytest.mark.slow
def test_gunicorn_hooks_run_cleanly(tmp_path, gunicorn_app):
    """The generated config's hooks (the freezes before the fork and after the import,
    the time of each request, the trim once the worker is idle) raise nothing: gunicorn
    and the trimming thread would only log it."""
    for _ in range(3):
        status, _, body = get(gunicorn_app, "/login")
        assert status == 200 and b"<form" in body
    time.sleep(11)  # idle: the trimming thread wakes every 5 s, trims after 5 idle s
    status, _, _ = get(gunicorn_app, "/healthz")
    assert status == 200
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Booting worker" in log
    assert "Traceback" not in log and "Exception" not in log, log


@pytest.mark.slow
def test_gunicorn_stops_itself_once_idle_and_only_when_asked(apps, tmp_path):
    """IDLE_STOP_SECONDS (set by the unit): no request for that long and gunicorn exits
    cleanly (status 0, so systemd does not restart it; its socket starts it again).
    Unset, as under `vgen serve`, the app never stops itself."""
    app = apps / "sample"
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"))
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env, check=True,
                   capture_output=True)
    servers = {}
    for idle in ("2", ""):
        port = free_port()
        log = tmp_path / f"gunicorn-{idle or 'never'}.log"
        servers[idle] = (port, log, subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"], cwd=app,
            env=dict(env, GUNICORN_BIND=f"127.0.0.1:{port}", IDLE_STOP_SECONDS=idle),
            preexec_fn=deny_write_execute, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
        ))
    try:
        for port, _, _ in servers.values():
            wait_for(port)
        port, log, stopping = servers["2"]
        for _ in range(3):  # requests keep it up: idle counts from the last one
            assert get(port, "/healthz")[0] == 200
            time.sleep(1)
        assert stopping.poll() is None
        assert stopping.wait(timeout=15) == 0
        assert "No request for 2 s (IDLE_STOP_SECONDS): stopping until the next connection" in log.read_text()
        _, _, never = servers[""]
        assert never.poll() is None  # still serving
    finally:
        for _, _, server in servers.values():
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=30)


@pytest.fixture
def echo_upstream():
    """A stand-in for gunicorn answering each request with the headers it was sent."""

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_nginx_tells_the_app_its_port(apps, tmp_path, echo_upstream):
    """On a port other than 80/443 the app must know the port: Flask-WTF's HTTPS check
    compares the Referer, port included, with the app's own URL."""
    with nginx_serving(apps / "sample", tmp_path / "nginx", echo_upstream) as listen:
        wait_for(listen, "/")
        status, headers, body = get(listen, "/signup")
        sent = json.loads(body)
        assert sent["x-forwarded-host"] == "sample.example.com"
        assert sent["x-forwarded-port"] == str(listen)


@pytest.mark.slow
def test_nginx_never_shows_its_version(apps, tmp_path, echo_upstream):
    with nginx_serving(apps / "sample", tmp_path / "nginx", echo_upstream) as listen:
        wait_for(listen, "/")
        status, headers, body = get(listen, "/login")
        assert status == 200 and headers["Server"] == "nginx"
        status, headers, body = get(listen, "/static/no-such-file.css")  # nginx's own page
        assert status == 404 and headers["Server"] == "nginx"
        assert b"<center>nginx</center>" in body
