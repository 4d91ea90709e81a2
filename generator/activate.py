#!/usr/bin/python3
"""vgen-activate: put the releases `vgen install` laid into service, on the host itself.

`vgen install` lays each vertical's release in /srv/vgen/SLUG/releases/ID, with its
units, cron file and nginx site and the wheelhouse, then prints this command to run as
root on the host (the file is laid as /usr/local/sbin/vgen-activate):

    vgen-activate cheesemaking=3f2a9c1e0b7d honeybees=81d0c6a2e4f5

For each vertical, in the order given:

1. The release gets its virtual environment: /srv/vgen/venvs/pyX.Y-HASH, built once,
   offline, from /srv/vgen/wheelhouse (`pip install --no-index`), and shared by every
   release with the same pinned requirements (normally the whole fleet: one copy of
   Flask on disk and in the page cache). release/.venv links to it.
2. /srv/vgen/SLUG/current switches to the release; /srv/vgen/SLUG/previous keeps the
   one it replaces, for a rollback.
3. The new release is migrated and asked for its /healthz before it serves. A running
   service is reloaded (its ExecReload: migrate, `flask healthz`, then HUP for a
   graceful worker swap); a stopped one, which its socket starts on demand, has its
   migrate unit run again (migrate, `flask healthz`), so the next start is ready.
4. The socket is enabled and started. A service that was running is asked for
   /healthz through it once the new workers are up.
5. When step 3 or 4 fails, the links switch back, a service that had been running
   restarts on the previous release, and the journal lines that say why are shown.

Then nginx is checked and reloaded, and releases older than `previous` are removed
(and venvs no release uses any more). A vertical whose release is already `current`
changes nothing. Exit status 1 when any vertical failed.

This file runs with the host's own /usr/bin/python3 and imports nothing but the
standard library: it is not part of vgen on the host.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRV = Path("/srv/vgen")
UNITS = Path("/etc/systemd/system")
SLUG_RE = re.compile(r"^[a-z][a-z0-9]{1,30}$")
RELEASE_RE = re.compile(r"^[0-9a-f]{12,64}$")
# How long a reloaded service has to answer /healthz with its new workers.
HEALTH_SECONDS = 60
NOTHING_CHANGED = "nothing changed"


class Failed(Exception):
    """A vertical that could not be put into service; the message says why."""


def main(argv: list[str]) -> int:
    os.umask(0o022)  # the venvs must be readable by the apps' dynamic users
    wanted = []
    for arg in argv:
        slug, _, release = arg.partition("=")
        if not (SLUG_RE.match(slug) and RELEASE_RE.match(release)):
            print(f"vgen-activate: {arg!r} is not SLUG=RELEASE (as `vgen install` prints it)", file=sys.stderr)
            return 2
        wanted.append((slug, release))
    if not wanted:
        print("usage: vgen-activate SLUG=RELEASE...", file=sys.stderr)
        return 2
    try:
        systemctl("daemon-reload")
    except Failed as e:
        print(f"vgen-activate: {e}", file=sys.stderr)
        return 1
    failed = 0
    # The venvs first, one at a time (the fleet normally shares one); then the verticals
    # side by side, a few at a time: each mostly waits for its migrate unit or reload.
    for slug, release in wanted:
        try:
            build_venv(SRV / slug / "releases" / release)
        except (Failed, OSError):
            pass  # activate() says so, for that vertical
    changed = False
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        for slug, said in zip([slug for slug, _ in wanted], pool.map(lambda w: attempt(*w), wanted)):
            failed += said.startswith(f"{slug}: FAILED")
            changed |= not said.endswith(NOTHING_CHANGED)
            print(said, flush=True)
    if changed:  # a new release brings its nginx site
        try:
            reload_nginx()
        except Failed as e:
            failed += 1
            print(f"nginx: FAILED: {e}", flush=True)
    prune()
    return 1 if failed else 0


def attempt(slug: str, release: str) -> str:
    try:
        return activate(slug, release)
    except (Failed, OSError) as e:
        return f"{slug}: FAILED: {e}"


def activate(slug: str, release: str) -> str:
    home = SRV / slug
    if not (home / "releases" / release).is_dir():
        raise Failed(f"no release {release} in {home / 'releases'}: run `vgen install {slug}` first")
    old, before = link_target(home / "current"), link_target(home / "previous")
    if old == release:
        systemctl("enable", "--now", f"{slug}.socket")
        return f"{slug}: {already_current(release)}"
    build_venv(home / "releases" / release)
    was_running = is_active(f"{slug}.service")
    since = time.time()
    switch(home, release, old)

    def roll_back(e: Failed, restart: bool) -> Failed:
        reason = journal(slug, since) or str(e)
        switch(home, old, before)
        if restart:  # the new workers run: start again on the release before
            # A release that crashed at boot may have used up the service's start limit.
            systemctl("reset-failed", f"{slug}.service", f"{slug}.socket", check=False)
            systemctl("restart", f"{slug}.service", check=False)
            systemctl("start", f"{slug}.socket", check=False)
        elif not was_running and old is not None:  # its migrate unit ran the new code
            systemctl("restart", f"{slug}-migrate.service", check=False)
        kept = f"release {old} serves again" if old else "nothing serves yet"
        return Failed(f"release {release} refused, {kept}. The journal says:\n{indent(reason)}")

    try:
        if was_running:  # migrate, healthz, then HUP: a failure stops before the HUP
            systemctl("reload", f"{slug}.service")
        else:
            systemctl("restart", f"{slug}-migrate.service")
        systemctl("enable", "--now", f"{slug}.socket")
    except Failed as e:
        raise roll_back(e, restart=False) from None
    if was_running:
        try:
            health(socket_port(slug))
        except Failed as e:
            raise roll_back(e, restart=True) from None
    state = "serving" if was_running else "ready (the socket starts it on the first connection)"
    return f"{slug}: release {release} {state}" + (f"; previous release {old}" if old else "")


def already_current(release: str) -> str:
    return f"release {release} is already current; {NOTHING_CHANGED}"


def build_venv(release: Path) -> None:
    """Link release/.venv to the shared venv for its pinned requirements, built once."""
    requirements = release / "requirements.txt"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    key = hashlib.sha256(requirements.read_bytes() + version.encode()).hexdigest()[:12]
    venv = SRV / "venvs" / f"py{version}-{key}"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", "--no-index",
             "--find-links", str(SRV / "wheelhouse"), "-r", str(requirements)])
        (venv / ".complete").write_text("")
    link = release / ".venv"
    if link_target(link) != str(venv):
        make_link(link, str(venv))


def switch(home: Path, release: str | None, previous: str | None) -> None:
    """Point current at releases/release and previous at releases/previous (None: no link)."""
    for name, target in (("previous", previous), ("current", release)):
        if target is None:
            (home / name).unlink(missing_ok=True)
        else:
            make_link(home / name, f"releases/{target}")


def make_link(path: Path, target: str) -> None:
    """Replace path with a symbolic link to target in one step (rename over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def link_target(path: Path) -> str | None:
    """What a link points to (the release ID for current and previous), or None."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return target.removeprefix("releases/")


def is_active(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0


def socket_port(slug: str) -> int:
    text = (UNITS / f"{slug}.socket").read_text(encoding="utf-8")
    return int(re.search(r"^ListenStream=127\.0\.0\.1:(\d+)$", text, re.M).group(1))


def health(port: int) -> None:
    """Wait for /healthz to answer 200 through the socket (the new workers are up)."""
    deadline = time.monotonic() + HEALTH_SECONDS
    said = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10):
                return
        except urllib.error.HTTPError as e:
            said = f"/healthz answered {e.code}"
        except OSError as e:
            said = f"/healthz: {e}"
        time.sleep(0.5)
    raise Failed(said)


def journal(slug: str, since: float) -> str:
    """The app's journal lines since the activation began: why it failed."""
    done = subprocess.run(
        ["journalctl", "--no-pager", "--output=cat", f"--since=@{int(since)}",
         "--unit", f"{slug}.service", "--unit", f"{slug}-migrate.service"],
        capture_output=True, text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return "\n".join(lines[-20:])


def reload_nginx() -> None:
    """Check nginx's configuration, reload it, and return once the workers that ran the
    old configuration no longer accept connections (a reload is asynchronous: until
    then a request for a new site could still meet the old configuration)."""
    done = subprocess.run(["nginx", "-t"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Failed(f"`nginx -t` refuses the configuration, nginx keeps the one it has:\n{indent(done.stderr)}")
    old = nginx_workers()
    systemctl("reload-or-restart", "nginx.service")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        workers = nginx_workers()
        if not any(pid in workers and "shutting down" not in workers[pid] for pid in old):
            return
        time.sleep(0.05)


def nginx_workers() -> dict[int, str]:
    """nginx's worker processes: pid -> their title ("nginx: worker process", and "is
    shutting down" once a reload has retired them)."""
    try:
        master = int(Path("/run/nginx.pid").read_text())
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except (OSError, ValueError):
        return {}
    workers = {}
    for pid in children:
        try:
            workers[int(pid)] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            pass
    return workers


def prune() -> None:
    """Remove the releases neither current nor previous, then the venvs none links to."""
    used = set()
    for home in SRV.iterdir() if SRV.is_dir() else []:
        if not (home / "releases").is_dir():
            continue
        keep = {link_target(home / "current"), link_target(home / "previous")}
        for release in (home / "releases").iterdir():
            if release.name not in keep and not release.name.startswith("."):
                shutil.rmtree(release, ignore_errors=True)
            else:
                used.add(os.readlink(release / ".venv") if (release / ".venv").is_symlink() else None)
    for venv in (SRV / "venvs").iterdir() if (SRV / "venvs").is_dir() else []:
        if str(venv) not in used:
            shutil.rmtree(venv, ignore_errors=True)


def systemctl(*args: str, check: bool = True) -> None:
    run(["systemctl", *args], check=check)


def run(command: list[str], check: bool = True) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise Failed(f"`{' '.join(command)}` failed:\n{indent(said)}")


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
