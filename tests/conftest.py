"""Shared fixtures: a committed copy of the template, projects, generated apps, servers.

Every generated app has the same dependencies, so the tests run all apps with this
interpreter (scripts/test installs them into .venv) instead of one venv per app; one test
installs an app into its own venv to prove that works too.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import yaml

from generator import fleet, ports, render, spec
from generator.appupdate import Outcome
from generator.project import Project

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "apps", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis",
    "test-artifacts", "build", "node_modules",
)


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory) -> Path:
    """The working tree as a committed repository, so tests render what is on disk."""
    dest = tmp_path_factory.mktemp("template") / "vgen"
    shutil.copytree(ROOT, dest, ignore=IGNORE)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "template under test")
    return dest


@pytest.fixture(scope="session")
def wheels():
    """The generated apps' wheelhouse, as `vgen install` gathers it for a host like this
    machine (pip downloads it once; later runs take it from the cache)."""
    from generator import wheelhouse

    listed = subprocess.run([sys.executable, str(ROOT / "scripts/app-requirements")],
                            capture_output=True, text=True, check=True).stdout.split()
    return wheelhouse.build(listed, *wheelhouse.host_python(Path("/")))


@pytest.fixture(scope="session")
def systemd_host(tmp_path_factory):
    """One booted Debian 12 container with real systemd for the whole session
    (tests/hosts.py); the tests that use it run on one xdist worker, in file order."""
    import hosts

    if os.environ.get(hosts.OPT_OUT) == "1":
        pytest.skip(f"{hosts.OPT_OUT}=1: the tests under real systemd are left out, as asked")
    try:
        with hosts.Fleet(tmp_path_factory.mktemp("hosts"), count=1) as fleet:
            yield fleet.hosts[0]
    except hosts.Unavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def project(template_repo, tmp_path) -> Project:
    """A private clone of the template repository, with apps going to tmp_path/apps."""
    root = tmp_path / "vgen"
    subprocess.run(["git", "clone", "-q", "--local", str(template_repo), str(root)], check=True)
    return Project(root=root, out=tmp_path / "apps")


SAMPLE_ANSWERS = ROOT / "tests" / "fixtures" / "answers-sample.yml"
EXAMPLES = ["cheesemaking", "childmilestone", "coachboard", "honeybees", "shiftfill"]


def sample_answers(**changes) -> dict:
    """The hand-written answers covering every field type, with some values changed."""
    answers = yaml.safe_load(SAMPLE_ANSWERS.read_text())
    answers.update(changes)
    return answers


def example_answers(slug: str) -> dict:
    """An example vertical's answers, with its port from the committed ports.toml."""
    vertical = spec.load_vertical(ROOT / "verticals" / f"{slug}.toml")
    return vertical.answers(ports.load(ROOT / "ports.toml").ports[slug])


def render_app(template_repo: Path, answers: dict, dest: Path) -> Path:
    """Render an app from answers the way vgen does (the same output as copier copy)."""
    commit = render.template_commit(template_repo)
    render.template(template_repo, commit).render(answers, dest, str(template_repo))
    return dest


def write_spec(project: Project, slug: str, text: str) -> Path:
    path = project.spec_path(slug)
    path.write_text(text)
    return path


def generate(project: Project, slugs=None, jobs=2, dry_run=False) -> dict[str, Outcome]:
    """vgen generate's outcomes by slug, from the library function the CLI calls."""
    return fleet.generate(project, slugs, jobs, dry_run).by_slug()


def port_of(project: Project, slug: str) -> int:
    return ports.load(project.ports_path).ports[slug]


def app_env(app_dir: Path, data_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    env["DATA_DIR"] = str(data_dir or app_dir / "instance")
    env.pop("PYTHONPATH", None)
    return env


def run_app_tests(app_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=app_dir, env=app_env(app_dir), capture_output=True, text=True,
    )


def migrate(app_dir: Path, data_dir: Path | None = None, python=sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "flask", "--app", "app", "migrate"], cwd=app_dir,
                          env=app_env(app_dir, data_dir), capture_output=True, text=True, check=True)


def mailed_link(data_dir: Path, to: str) -> str:
    """The path of the link in the newest mail to `to` in an app's outbox
    (DATA_DIR/outbox/*.eml, where mail goes without SMTP_HOST): after a sign-up, the
    "/verify/<token>" that finishes it."""
    for path in sorted((Path(data_dir) / "outbox").glob("*.eml"), reverse=True):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == to:
            return urlsplit(re.search(r"https?://\S+", message.get_content()).group()).path
    raise AssertionError(f"no mail to {to} in {data_dir}/outbox")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_port_free(port: int, timeout: float = 60) -> None:
    """Tests that serve an example on its registered port take turns for it."""
    deadline = time.monotonic() + timeout
    while not port_is_free(port):
        if time.monotonic() > deadline:
            pytest.fail(f"port {port} stayed busy for {timeout:.0f}s (scripts/run running?)")
        time.sleep(0.2)


def wait_for(url: str, timeout: float = 30) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def gunicorn(app_dir: Path, data_dir: Path | None = None, python=sys.executable, extra=()):
    """Run the app under gunicorn with its generated config; yield the process."""
    migrate(app_dir, data_dir, python)
    with running([python, "-m", "gunicorn", "-c", "gunicorn.conf.py", *extra],
                 app_dir.parent / f"{app_dir.name}-gunicorn.log", cwd=app_dir, env=app_env(app_dir, data_dir)) as proc:
        yield proc


@contextlib.contextmanager
def running(argv, log: Path, **kwargs):
    """A server process for the duration of the block, its output in log."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_listening(log: Path, proc, timeout: float = 30) -> None:
    """Our gunicorn bound the port (so the server we talk to is this test's app)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "Listening at:" in text:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not start:\n{log.read_text()[-3000:] if log.exists() else ''}")


@contextlib.contextmanager
def served_example(project: Project, slug: str):
    """An example vertical, generated and served by gunicorn on its registered port, for
    the duration of the block; yields its base URL and its DATA_DIR (where its outbox is)."""
    outcome = generate(project, [slug])[slug]
    assert outcome.status == "created", outcome.message
    app_dir = project.app_dir(slug)
    port = port_of(project, slug)
    wait_port_free(port)
    with gunicorn(app_dir) as proc:
        wait_for_listening(app_dir.parent / f"{app_dir.name}-gunicorn.log", proc)
        base = f"http://127.0.0.1:{port}"
        status, _ = wait_for(f"{base}/healthz")
        assert status == 200
        yield base, app_dir / "instance"
