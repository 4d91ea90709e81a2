"""`vgen deploy`: roll verticals out to the hosts of hosts.toml with Ansible.

vgen keeps the model (which vertical lives on which host, on which port) and writes a
plain inventory and playbook that ansible-playbook runs, so the rollout is something any
operations person can read, audit and rerun without vgen:

0. One read-only look at every host of hosts.toml finds the verticals in service on a
   host other than their placement (a placement edited by hand); generator/move.py
   carries each there, with its data, before the rollout (move.follow_placement, which
   the CLI calls).
1. For each host, `vgen install` lays its verticals under a staging root
   (build/deploy/HOST/root): releases, wheelhouse, units, cron files, nginx sites,
   vgen-activate. The tree is packed into one bundle whose bytes depend only on its
   content (sorted entries, owner root, each file's time derived from its content), so
   an unchanged fleet gives the same bundle and Ansible reports every task unchanged.
2. build/deploy/inventory.yml and build/deploy/playbook.yml are written (regenerated each
   time, ignored by git).
3. ansible-playbook runs it: one host at a time (serial, --batch N for more), stopping at
   the first host that fails or cannot be reached (any_errors_fatal, max_fail_percentage
   0), so the hosts after it are untouched. On each host: one read-only look at what it
   holds (PROBE: the bundle laid, the bundle a finished deploy put into service, each
   vertical's current release and socket); copy the bundle and unpack it over / when it
   is not laid yet, create each vertical's settings file only when it is missing (it is
   the admin's), then run vgen-activate, which switches each release, migrates, checks
   /healthz and rolls a failing vertical back by itself (generator/activate.py). A host
   whose bundle is in service, every release current and every socket up, is left at
   the look: vgen-activate would change nothing there.

`--check` runs Ansible's check mode (nothing changes on any host): the look still runs,
so each vertical that would be switched is named ("check mode: not activated");
`--diff` adds Ansible's diffs of the files the playbook would write.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import activate as activating
from . import install as installing
from . import placement
from .errors import VgenError
from .fsutil import atomic_write_text
from .project import Project

BUILD = Path("build/deploy")
# Laid once on the host and then the admin's: never in the bundle (a task creates it).
KEPT = ("etc/vgen/",)
# File times in the bundle: a fixed start plus an offset from the content, so that a
# changed file gets a new time (nginx's Last-Modified and ETag follow it) and an
# unchanged one keeps its time.
EPOCH = 1_700_000_000
# The name of the task whose output tells vgen what happened on each host.
RESULT = "What vgen-activate said"


@dataclass
class Staged:
    host: placement.Host
    slugs: list[str]
    bundle: Path
    releases: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    host: str
    slug: str
    release: str
    outcome: str  # what vgen-activate said, "not reached", "unchanged"...


def plan(project: Project, slugs: list[str], only_host: str | None = None) -> tuple[placement.Fleet, dict[str, list[str]]]:
    """hosts.toml's fleet, and the verticals each host gets (in hosts.toml's order)."""
    fleet = placement.load_or_fail(project.hosts_path, project.slugs())
    if fleet is None:
        raise VgenError(f"{project.shown(project.hosts_path)} is missing: vgen deploy needs the hosts to "
                        "deploy to ([hosts.NAME] with an address); `vgen install --root /` serves one local host")
    if only_host is not None and only_host not in fleet.hosts:
        raise VgenError(f"--host {only_host}: not one of the hosts in hosts.toml ({', '.join(fleet.hosts)})")
    by_host: dict[str, list[str]] = {}
    for name in fleet.hosts:
        if only_host in (None, name):
            chosen = fleet.verticals_on(name, slugs)
            if chosen:
                by_host[name] = chosen
    return fleet, by_host


def stage(project: Project, fleet: placement.Fleet, by_host: dict[str, list[str]],
          build: Path | None = None) -> list[Staged]:
    """Lay each host's verticals under its staging root and pack the bundle (under
    build/HOST, build/deploy by default)."""
    build = build or project.root / BUILD
    staged = []
    for name, slugs in by_host.items():
        root = build / name / "root"
        root.mkdir(parents=True, exist_ok=True)
        wheels = installing.wheels_for(slugs, root, project.out)
        # The staging root of the last deploy is laid again: install rewrites only what
        # changed (a no-change deploy writes nothing), then whatever it did not lay this
        # time (an older release, a vertical placed elsewhere since) is taken out.
        installed = installing.install(slugs, root, project.out, wheels)
        _prune(root, {laid.path for laid in installed.laid if laid.status != "removed"})
        staged.append(Staged(fleet.hosts[name], slugs, _bundle(root, build / name), installed.releases))
    return staged


def _bundle(root: Path, folder: Path) -> Path:
    """folder/bundle-DIGEST.tar.gz of the staging root: packed again only when a file
    under root changed since the last one was packed (packed.txt records which tree)."""
    tree = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        tree.update(f"{path.relative_to(root)}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    packed = folder / "packed.txt"
    try:
        fingerprint, name = packed.read_text().split()
        if fingerprint == tree.hexdigest() and (folder / name).is_file():
            return folder / name
    except (OSError, ValueError):
        pass
    bundle = folder / "bundle.tar.gz"
    _pack(root, bundle)
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]
    named = bundle.with_name(f"bundle-{digest}.tar.gz")
    for old in folder.glob("bundle-*.tar.gz"):
        if old != named:
            old.unlink()
    os.replace(bundle, named)
    atomic_write_text(packed, f"{tree.hexdigest()} {named.name}\n")
    return named


def _prune(root: Path, kept: set[Path]) -> None:
    """Remove from root every file and link not in kept, then the folders left empty."""
    for folder, dirs, names in os.walk(root, topdown=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder) / name
            if path not in kept:
                path.unlink()
        if Path(folder) != root and not any(Path(folder).iterdir()):
            Path(folder).rmdir()


def _pack(root: Path, bundle: Path) -> None:
    """A gzipped tar of root whose bytes depend only on what it holds."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if any(rel.startswith(k) or rel + "/" == k for k in KEPT):
                continue
            info = tar.gettarinfo(path, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                content = path.read_bytes()
                info.mtime = EPOCH + int(hashlib.sha256(content).hexdigest()[:7], 16)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.mtime = EPOCH
                tar.addfile(info)
    with open(bundle, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())


def host_vars(s: Staged) -> dict:
    """A staged host's inventory entry: how to reach it, and what its bundle brings."""
    return {
        **reach_vars(s.host),
        "vgen_bundle": str(s.bundle),
        "vgen_releases": " ".join(f"{slug}={release}" for slug, release in s.releases.items()),
        "vgen_settings": {slug: installing.settings_file(slug).decode() for slug in s.slugs},
    }


def reach_vars(host: placement.Host) -> dict:
    """How Ansible reaches a host of hosts.toml."""
    return {"ansible_host": host.address, "ansible_user": host.user,
            "ansible_python_interpreter": "/usr/bin/python3", **host.vars}


def reach_tasks() -> list[dict]:
    """Fail the play, by the host's name, when it cannot be reached."""
    return [
        # An unreachable host would only be left out of the play; the rollout stops there.
        {"name": "Reach the host", "ansible.builtin.ping": None, "ignore_unreachable": True,
         "register": "reached"},
        _unreachable("reached"),
    ]


def _unreachable(registered: str) -> dict:
    """Fail the play, by the host's name, when the task that registered `registered`
    could not reach it."""
    return {"name": "Stop the rollout at a host that cannot be reached",
            "ansible.builtin.fail": {"msg": f"{{{{ inventory_hostname }}}} cannot be reached: "
                                            f"{{{{ {registered}.msg | default('') }}}}"},
            "when": f"{registered}.unreachable | default(false)"}


# What a host holds of a deploy (vgen_bundle, vgen_releases), as JSON, in one round trip:
# read-only, so it runs in check mode too. Run by the host's own python3.
PROBE = r"""import json, os, subprocess, sys

bundle, wanted = sys.argv[1], dict(arg.partition("=")[::2] for arg in sys.argv[2:])


def current(slug):
    try:
        return os.readlink(f"/srv/vgen/{slug}/current").removeprefix("releases/")
    except OSError:
        return None


def in_service():
    try:
        with open("/var/cache/vgen/in-service") as f:
            return f.read().strip() == bundle
    except OSError:
        return False


shown = subprocess.run(["systemctl", "show", "--property=Id,ActiveState,UnitFileState",
                        *[f"{slug}.socket" for slug in wanted]], capture_output=True, text=True).stdout
units = [dict(line.partition("=")[::2] for line in block.splitlines()) for block in shown.split("\n\n")]
up = {unit.get("Id") for unit in units if unit.get("ActiveState") == "active" and unit.get("UnitFileState") == "enabled"}
print(json.dumps({
    "laid": os.path.exists(f"/var/cache/vgen/{bundle}.laid"),
    "in_service": in_service(),
    "no_settings": [slug for slug in wanted if not os.path.exists(f"/etc/vgen/{slug}.env")],
    "stale": [slug for slug, release in wanted.items() if current(slug) != release or f"{slug}.socket" not in up],
}))
"""


def probe_tasks() -> list[dict]:
    """Reach the host and find what it holds already (vgen_found: PROBE's answer)."""
    return [
        {"name": "Reach the host and find what it holds already (the bundle laid, the releases in service)",
         "ansible.builtin.command": {"cmd": "/usr/bin/python3 - {{ vgen_bundle | basename }} {{ vgen_releases }}",
                                     "stdin": PROBE},
         "ignore_unreachable": True, "register": "found", "changed_when": False, "check_mode": False},
        _unreachable("found"),
        {"name": "Remember what it holds", "ansible.builtin.set_fact": {"vgen_found": "{{ found.stdout | from_json }}"}},
    ]


def lay_tasks() -> list[dict]:
    """The tasks that reach a host and lay its bundle (vgen_bundle) under / once: a host
    that has it laid already is left alone."""
    laid = "vgen_found.laid"
    return [
        *probe_tasks(),
        {"name": "A folder for the bundles",
         "ansible.builtin.file": {"path": "/var/cache/vgen", "state": "directory", "mode": "0700"},
         "when": f"not {laid}"},
        {"name": "Ship the bundle (releases, wheelhouse, units, cron files, nginx sites)",
         "ansible.builtin.copy": {"src": "{{ vgen_bundle }}", "dest": "/var/cache/vgen/{{ vgen_bundle | basename }}",
                                  "mode": "0600"},
         "when": f"not {laid}"},
        {"name": "Lay it under /",
         "ansible.builtin.unarchive": {"src": "/var/cache/vgen/{{ vgen_bundle | basename }}", "dest": "/",
                                       "remote_src": True},
         "register": "unpacked", "when": f"not {laid} and not ansible_check_mode"},
        {"name": "Remember it is laid",
         "ansible.builtin.copy": {"content": "", "dest": "/var/cache/vgen/{{ vgen_bundle | basename }}.laid",
                                  "mode": "0600"},
         "when": "unpacked is changed"},
    ]


def result_task() -> dict:
    """The task whose output vgen reads (run() below): what vgen-activate said on the
    host, or None when it was left out, and the verticals that were not in service."""
    return {"name": RESULT,
            "ansible.builtin.debug": {"msg": {"activated": "{{ activated.stdout | default(none) }}",
                                              "stale": "{{ vgen_found.stale }}"}}}


def write_playbook(project: Project, staged: list[Staged], batch: int = 1) -> tuple[Path, Path]:
    """build/deploy/inventory.yml and playbook.yml for the staged hosts."""
    build = project.root / BUILD
    build.mkdir(parents=True, exist_ok=True)
    hosts = {s.host.name: host_vars(s) for s in staged}
    inventory = build / "inventory.yml"
    inventory.write_text("# Written by vgen deploy from hosts.toml and ports.toml; regenerated each time.\n"
                         + to_yaml({"all": {"hosts": hosts}}))
    play = [{
        "name": "vgen deploy: lay each host's releases, then put them into service",
        "hosts": "all",
        "serial": batch,
        "any_errors_fatal": True,
        "max_fail_percentage": 0,
        "gather_facts": False,
        "tasks": [
            *lay_tasks(),
            {"name": "A folder for the settings files",
             "ansible.builtin.file": {"path": "/etc/vgen", "state": "directory", "mode": "0755"},
             "when": "vgen_found.no_settings | length > 0"},
            {"name": "Each vertical's settings file, once (then it is the admin's)",
             "ansible.builtin.copy": {"content": "{{ vgen_settings[item] }}",
                                      "dest": "/etc/vgen/{{ item }}.env", "mode": "0600", "force": False},
             "loop": "{{ vgen_found.no_settings }}"},
            # Left out on a host whose bundle was put into service by a deploy that
            # finished, every release still current and every socket up: what
            # vgen-activate would do there is nothing.
            {"name": "Put the new releases into service (health-gated; vgen-activate rolls back a failing one)",
             "ansible.builtin.command": "/usr/local/sbin/vgen-activate {{ vgen_releases }}",
             "register": "activated",
             "changed_when": "activated.stdout_lines | reject('search', 'nothing changed$') | list | length > 0",
             "failed_when": False,
             "when": "vgen_found.stale | length > 0 or not vgen_found.in_service"},
            {"name": "Remember the bundle is in service",
             "ansible.builtin.copy": {"content": "{{ vgen_bundle | basename }}\n", "dest": "/var/cache/vgen/in-service",
                                      "mode": "0600"},
             "when": "activated is not skipped and activated.rc == 0"},
            result_task(),
            {"name": "Stop the rollout when a vertical failed",
             "ansible.builtin.fail": {"msg": "{{ activated.stdout }}"},
             "when": "activated.rc is defined and activated.rc != 0"},
        ],
    }]
    playbook = build / "playbook.yml"
    playbook.write_text("# Written by vgen deploy; regenerated each time. Run it again with:\n"
                        f"#   ansible-playbook -i {inventory} {playbook}\n"
                        + to_yaml(play))
    return inventory, playbook


class _Dumper(yaml.SafeDumper):
    pass


# Text of several lines (the probe's script, settings files) as a literal block, read as
# it is written rather than as one quoted line of escapes.
_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text.strip() else None))


def to_yaml(data) -> str:
    """The YAML of an inventory or playbook vgen writes: keys in the order given."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000)


def run(staged: list[Staged], inventory: Path, playbook: Path,
        check: bool = False, diff: bool = False) -> tuple[int, list[Outcome], str]:
    """Run the playbook; (exit status, one outcome per vertical, Ansible's recap)."""
    options = (["--check"] if check else []) + (["--diff"] if diff else [])
    status, output = _ansible_playbook(inventory, playbook, *options)
    results = _results(output)
    outcomes = []
    for s in staged:
        found = results.get(s.host.name)
        said = _said(found.get("activated") or "") if found else {}
        for slug in s.slugs:
            if slug not in said and found and slug not in found.get("stale", [slug]):
                # vgen-activate was left out: the release was in service already.
                said[slug] = activating.already_current(s.releases[slug])
            outcomes.append(Outcome(s.host.name, slug, s.releases[slug], said.get(slug, "not reached")))
    return status, outcomes, _recap(output)


def ansible(program: str) -> str:
    """The path of an Ansible program (ansible-playbook, ansible)."""
    # ansible-core installs its programs beside vgen's own Python, which may not be on PATH.
    found = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
    if found is None:
        raise VgenError(f"vgen runs {program}, which is not installed: pip install 'vgen[deploy]' (or ansible-core)")
    return found


def ansible_env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_HOST_KEY_CHECKING=os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "False"),
                ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                # One SSH round trip per task instead of several (hosts log in as root,
                # so no sudo requiretty stands in the way).
                ANSIBLE_PIPELINING=os.environ.get("ANSIBLE_PIPELINING", "True"),
                # vgen reads the output: the recap, the failures, and RESULT's answers.
                ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
                ANSIBLE_DISPLAY_OK_HOSTS="True")


def ad_hoc(hosts: dict[str, dict], module: str, args: str, build: Path, by: str) -> tuple[dict[str, dict], str]:
    """Run one ad-hoc Ansible command on every host at once (hosts: name -> inventory
    variables, written to build/inventory.yml); (each host's result, all Ansible
    printed). A result has "unreachable" (and "msg") for a host that did not answer."""
    build.mkdir(parents=True, exist_ok=True)
    inventory = build / "inventory.yml"
    inventory.write_text(f"# Written by {by} from hosts.toml; regenerated each time.\n"
                         + to_yaml({"all": {"hosts": hosts}}))
    # --tree (ansible-core's own tree callback): one JSON file per host with its result,
    # unreachable or not.
    tree = build / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    done = subprocess.run([ansible("ansible"), "all", "-i", str(inventory), "--forks", str(len(hosts)),
                           "--tree", str(tree), "-m", module, "-a", args],
                          capture_output=True, text=True, env=ansible_env(), check=False)
    output = done.stdout + done.stderr
    results = {}
    for name in hosts:
        try:
            results[name] = json.loads((tree / name).read_text())
        except (OSError, ValueError):
            raise VgenError(f"ansible could not read {name}'s state:\n{output[-2000:]}") from None
    return results, output


def ansible_playbook(inventory: Path, playbook: Path, *options: str) -> tuple[int, str]:
    """Run ansible-playbook; (exit status, its recap preceded by the lines that say why
    a host failed or could not be reached)."""
    status, output = _ansible_playbook(inventory, playbook, *options)
    return status, _recap(output)


def _ansible_playbook(inventory: Path, playbook: Path, *options: str) -> tuple[int, str]:
    """Run ansible-playbook; (exit status, all it printed)."""
    command = [ansible("ansible-playbook"), "-i", str(inventory), str(playbook), *options]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=ansible_env())
    return done.returncode, done.stdout + done.stderr


def _recap(output: str) -> str:
    """Ansible's recap, preceded by the lines that say why a host failed or could not be
    reached."""
    recap = output[output.find("PLAY RECAP"):].strip() if "PLAY RECAP" in output else output.strip()[-3000:]
    # Why a host failed or could not be reached: Ansible's own lines, before the recap.
    # (A result Ansible prints over several lines runs on to the next blank line.)
    fatal, block = [], False
    for line in output.splitlines():
        block = line.startswith(("fatal:", "failed:")) or (block and bool(line.strip()))
        if block:
            fatal.append(line[:2000])
    if fatal:
        recap = "\n".join(fatal) + "\n" + recap
    return recap


def _results(output: str) -> dict[str, dict]:
    """What the RESULT task printed for each host: {"activated": vgen-activate's output
    or None when it was left out, "stale": the verticals not in service before}."""
    results = {}
    decoder = json.JSONDecoder()
    for task in output.split(f"TASK [{RESULT}]")[1:]:
        for match in re.finditer(r"^ok: \[([^\]\s]+)\] => ", task, re.M):
            try:
                printed, _ = decoder.raw_decode(task, match.end())
            except ValueError:
                continue
            if isinstance(printed, dict) and isinstance(printed.get("msg"), dict):
                results[match.group(1)] = printed["msg"]
    return results


def _said(output: str) -> dict[str, str]:
    """vgen-activate's line per vertical: slug -> what it said after the slug."""
    said = {}
    for line in output.splitlines():
        slug, sep, rest = line.partition(": ")
        if sep and slug and " " not in slug:
            said[slug] = rest
    return said
