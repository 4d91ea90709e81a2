"""`vgen move SLUG HOST`: move a vertical, with its data, to another host of hosts.toml.

Like `vgen deploy`, vgen writes plain Ansible files (build/move/SLUG/: inventory.yml,
move.yml, undo.yml, retire.yml) and runs them, so every remote step can be read and
run again without vgen:

1. move.yml, on the new host: lay the vertical's release (the bundle `vgen deploy`
   would ship, with only this vertical) and put it into service behind its socket with
   vgen-activate, but not in nginx yet: nothing reaches it.
2. move.yml, on the old host: stop writes. Its nginx site is swapped for one that
   answers every request with 503, a Retry-After header and "try again" (never a wrong
   or empty answer); once the nginx workers of the old configuration have finished
   their requests, the socket and service stop. Then the backup unit takes a verified
   backup (`flask --app app backup`), and Ansible fetches it, with the app's secret key
   (sessions stay valid) and its settings file, to build/move/SLUG/.
3. move.yml, on the new host: the backup is restored (`flask --app app restore
   --keep-sessions`, which verifies the file and the restored row counts, and keeps the
   logins: no one has to log in again), the rows are compared with the
   backup's, the secret key and settings are put in place, the socket starts,
   /healthz must answer through the socket and then through nginx, whose site is
   enabled last.
4. hosts.toml places the vertical on the new host (a comment-keeping atomic write).
5. retire.yml, on the old host: the units are stopped and removed, with the release,
   the cron file and the nginx site (that host's nginx then has no site for it). Its
   data folder and settings file are kept, as a safety copy, in
   /var/lib/vgen-retired/SLUG-TIME/ on that host: remove it once the move is trusted.

`vgen deploy` moves a vertical the same way when hosts.toml was edited by hand: before
its rollout, one read-only look at every host (in_service) finds the verticals in
service on a host other than their placement, and each is carried there (carry, steps
1, 2, 3 and 5). A vertical in service on two hosts, or one whose copy may be on a host
that does not answer, stops the deploy before anything changes (misplaced).

When step 1, 2 or 3 fails, undo.yml puts the old host back into service (its site,
its socket) and takes the half-moved copy out of service on the new host; hosts.toml
is unchanged. The files carried through build/move/SLUG/ are removed at the end.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import deploy, placement, ports
from .errors import Problem, VgenError
from .project import Project

BUILD = Path("build/move")
RETIRED = "/var/lib/vgen-retired"
# How long a moving vertical tells clients to wait before they try again.
RETRY_AFTER_SECONDS = 30


@dataclass
class Moved:
    slug: str
    source: placement.Host
    target: placement.Host
    release: str
    restored: str  # what restore said: "Restored FILE (N rows in M tables)."
    retired: str  # where the old host keeps its safety copy


def server_name(app: Path, slug: str) -> str:
    """The name nginx serves the vertical by: its site's server_name."""
    site = app / "deploy" / f"{slug}.nginx.conf"
    try:
        match = re.search(r"^\s*server_name\s+([^;\s]+)", site.read_text(encoding="utf-8"), re.M)
    except OSError as e:
        raise VgenError(f"{site}: cannot be read ({e.strerror}): run `vgen generate {slug}` first") from None
    if match is None:
        raise VgenError(f"{site} has no server_name: regenerate it with `vgen generate {slug}`")
    return match.group(1)


def plan(project: Project, slug: str, to: str) -> tuple[placement.Fleet, placement.Host, placement.Host]:
    """hosts.toml's fleet, the host the vertical lives on and the one it moves to."""
    fleet = placement.load_or_fail(project.hosts_path, project.slugs())
    if fleet is None:
        raise VgenError(f"{project.shown(project.hosts_path)} is missing: vgen move moves a vertical between "
                        "its [hosts.NAME]")
    if slug not in project.slugs():
        raise VgenError(f"{slug}: no vertical of that name (verticals/{slug}.toml)")
    if to not in fleet.hosts:
        raise VgenError(f"{to}: not one of the hosts in hosts.toml ({', '.join(fleet.hosts)})")
    source = fleet.host_of(slug)
    if source.name == to:
        raise VgenError(f"{slug} already lives on {to}: nothing to move")
    return fleet, source, fleet.hosts[to]


def move(project: Project, slug: str, to: str, say=lambda text: None) -> Moved:
    """Move slug, with its data, to host `to`; raises VgenError (the old host serving
    again) when it cannot."""
    fleet, source, target = plan(project, slug, to)
    return carry(project, fleet, slug, source, target, say)


def carry(project: Project, fleet: placement.Fleet, slug: str, source: placement.Host, target: placement.Host,
          say=lambda text: None) -> Moved:
    """Steps 1 to 5 above: move slug, with its data, from source, where it is in
    service, to target; raises VgenError (the old host serving again) when it cannot."""
    port = ports.load(project.ports_path).ports.get(slug)
    if port is None:
        raise VgenError(f"{slug} has no port in ports.toml: run `vgen generate {slug}` first")
    name = server_name(project.app_dir(slug), slug)
    build = project.root / BUILD / slug
    carry = build / "carry"
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir(parents=True, mode=0o700)
    say(f"Laying {slug} for {target.name} ...")
    [staged] = deploy.stage(project, fleet, {target.name: [slug]}, build=build)
    retired = f"{RETIRED}/{slug}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    inventory, playbooks = write_playbooks(build, staged, source, port, name, retired)
    try:
        say(f"Moving {slug} from {source.name} to {target.name} (its requests get 503 \"try again\" meanwhile) ...")
        status, recap = deploy.ansible_playbook(inventory, playbooks["move"])
        if status != 0:
            undo_status, undo_recap = deploy.ansible_playbook(inventory, playbooks["undo"])
            kept = (f"{slug} serves again on {source.name}" if undo_status == 0 else
                    f"putting {slug} back into service on {source.name} failed too:\n{undo_recap}\nrun "
                    f"`ansible-playbook -i {inventory} {playbooks['undo']}` once the host answers")
            raise VgenError(f"moving {slug} to {target.name} failed; hosts.toml is unchanged and {kept}. "
                            f"Ansible says:\n{recap}")
        restored = (carry / "restored.txt").read_text().strip()
        if fleet.host_of(slug).name != target.name:
            placement.set_placement(project.hosts_path, slug, target.name)
            say(f"{project.shown(project.hosts_path)}: {slug} placed on {target.name}")
        say(f"Retiring {slug} on {source.name} ...")
        status, recap = deploy.ansible_playbook(inventory, playbooks["retire"])
        if status != 0:
            raise VgenError(f"{slug} moved to {target.name} and serves there, but retiring the old copy on "
                            f"{source.name} failed; run `ansible-playbook -i {inventory} {playbooks['retire']}` "
                            f"once the host answers. Ansible says:\n{recap}")
    finally:
        shutil.rmtree(carry, ignore_errors=True)  # customers' data and the app's secret key
    return Moved(slug, source, target, staged.releases[slug], restored, retired)


def follow_placement(project: Project, fleet: placement.Fleet, slugs: list[str], check: bool = False,
                     say=lambda text: None) -> dict[str, placement.Host]:
    """Before a deploy of slugs: carry each one that is in service on a host other than
    the one hosts.toml places it on there, with its data (nothing moves with check);
    slug -> the host it was (or would be) moved from."""
    found, unreachable = in_service(project, fleet, slugs)
    moves = misplaced(fleet, slugs, found, unreachable, project.shown(project.hosts_path))
    for slug, source in moves.items():
        if check:
            say(f"{slug} would move from {source.name} to {fleet.host_of(slug).name}, with its data")
        else:
            carry(project, fleet, slug, source, fleet.host_of(slug), say)
    return moves


# Where each vertical is in service, per host: its release is current there, or its
# socket is enabled. Plain files, so it is one cheap look for many verticals.
LOOK = ("for slug in {{ vgen_slugs }}; do "
        "if [ -L /srv/vgen/$slug/current ] || [ -L /etc/systemd/system/sockets.target.wants/$slug.socket ]; "
        "then echo $slug; fi; done")


def in_service(project: Project, fleet: placement.Fleet, slugs: list[str]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Which of slugs each host of hosts.toml has in service, read with one ad-hoc
    Ansible command on every host at once (read-only; build/look/); and the hosts that
    did not answer, with why."""
    hosts = {name: {**deploy.reach_vars(host), "vgen_slugs": " ".join(slugs)} for name, host in fleet.hosts.items()}
    results, _ = deploy.ad_hoc(hosts, "ansible.builtin.shell", LOOK, project.root / "build/look", by="vgen deploy")
    found, unreachable = {}, {}
    for name, result in results.items():
        if result.get("unreachable") or "stdout" not in result:
            unreachable[name] = (result.get("msg") or "no answer").strip().splitlines()[0]
        else:
            found[name] = set(result["stdout"].split()) & set(slugs)
    return found, unreachable


def misplaced(fleet: placement.Fleet, slugs: list[str], found: dict[str, set[str]], unreachable: dict[str, str],
              shown: str = "hosts.toml") -> dict[str, placement.Host]:
    """The verticals in service on a host other than the one hosts.toml places them on:
    slug -> the host it is in service on (and its data lives on). Raises VgenError,
    with a problem naming each such vertical (in `shown`, hosts.toml) and its hosts, when a vertical is in service on two hosts
    or when where it lives cannot be told (a host did not answer)."""
    moves, problems = {}, []
    for slug in slugs:
        placed = fleet.host_of(slug).name
        on = [name for name in fleet.hosts if slug in found.get(name, ())]
        elsewhere = [name for name in on if name != placed]
        silent = [name for name in unreachable if name != placed]
        if len(on) > 1:
            problems.append(Problem(shown, f"[placement] {slug}",
                                    f"in service on {' and '.join(on)}, placed on {placed}: keep one copy (merge "
                                    "their data by hand) and retire the other before deploying it"))
        elif elsewhere and placed in unreachable:
            problems.append(Problem(shown, f"[placement] {slug}",
                                    f"in service on {elsewhere[0]}, placed on {placed}, which cannot be reached "
                                    f"({unreachable[placed]}): it cannot move there now"))
        elif elsewhere:
            moves[slug] = fleet.hosts[elsewhere[0]]
        elif placed not in on and placed not in unreachable and silent:
            problems.append(Problem(shown, f"[placement] {slug}",
                                    f"not in service on {placed}, where it is placed, and {' and '.join(silent)} "
                                    f"cannot be reached to tell whether it lives there, with its data "
                                    f"({'; '.join(unreachable[name] for name in silent)})"))
    if problems:
        raise VgenError(f"vgen deploy changed nothing: {len(problems)} vertical{'s' if len(problems) != 1 else ''} "
                        "cannot be rolled out where hosts.toml places them", problems)
    return moves


def write_playbooks(build: Path, staged: deploy.Staged, source: placement.Host, port: int, name: str,
                    retired: str) -> tuple[Path, dict[str, Path]]:
    """build/move/SLUG/inventory.yml, and move.yml, undo.yml and retire.yml."""
    slug, target = staged.slugs[0], staged.host
    carry = build / "carry"
    state = f"/var/lib/private/{slug}"  # the unit's StateDirectory (DynamicUser)
    inventory = build / "inventory.yml"
    hosts = {
        "source": {"hosts": {source.name: deploy.reach_vars(source)}},
        "target": {"hosts": {target.name: {**deploy.reach_vars(target), "vgen_bundle": str(staged.bundle),
                                           "vgen_releases": f"{slug}={staged.releases[slug]}"}}},
    }
    common = {"vgen_slug": slug, "vgen_port": port, "vgen_server_name": name, "vgen_carry": str(carry),
              "vgen_retired": retired}
    inventory.write_text(f"# Written by vgen move {slug} {target.name}; regenerated each time.\n"
                         + deploy.to_yaml({"all": {"vars": common, "children": hosts}}))
    site = f"/etc/nginx/sites-enabled/{slug}.conf"
    moving = f"/etc/nginx/sites-available/{slug}.moving.conf"
    moving_link = f"/etc/nginx/sites-enabled/{slug}.moving.conf"
    backup = "hostvars[groups['source'][0]].vgen_backup"  # what the backup on the old host recorded
    moved_name = f"moved-{{{{ {backup}.file | basename }}}}"
    restore_file = f"{state}/backups/{moved_name}"
    as_app = (f"systemd-run --quiet --wait --pipe --collect -p DynamicUser=yes -p User={slug} "
              f"-p StateDirectory={slug} -p WorkingDirectory=/srv/vgen/{slug}/current -E DATA_DIR=/var/lib/{slug} "
              f"/srv/vgen/{slug}/current/.venv/bin/flask --app app")
    # The app's own user owns what is copied into its state folder.
    own = f"chown --reference={state} "

    def play(name: str, hosts: str, tasks: list[dict], **options) -> dict:
        return {"name": name, "hosts": hosts, "gather_facts": False, "any_errors_fatal": True, **options,
                "tasks": tasks}

    lay = play(f"Lay {slug} on {target.name} and start it behind its socket, not in nginx yet", "target", [
        *deploy.lay_tasks(),
        {"name": "No nginx site for it here until its data has arrived",
         "ansible.builtin.file": {"path": site, "state": "absent"}},
        {"name": "Put the release into service behind its socket (vgen-activate: venv, migrate, /healthz)",
         "ansible.builtin.command": "/usr/local/sbin/vgen-activate {{ vgen_releases }}"},
        {"name": "Stop it for the restore", "ansible.builtin.command": f"systemctl stop {slug}.service"},
    ])
    stop_writes = play(f"Stop writes to {slug} on {source.name} and take a verified backup", "source", [
        *deploy.reach_tasks(),
        {"name": "A site that answers 503 \"try again\" while it moves",
         "ansible.builtin.copy": {"dest": moving, "mode": "0644", "content": moving_site(slug, name)}},
        {"name": "Swap it for the vertical's site",
         "ansible.builtin.file": {"path": site, "state": "absent"}},
        {"name": "Enable it", "ansible.builtin.file": {"src": f"../sites-available/{slug}.moving.conf",
                                                       "dest": moving_link, "state": "link"}},
        {"name": "Reload nginx, and wait until the workers of the old configuration have finished their requests",
         "ansible.builtin.shell": RELOAD_AND_DRAIN},
        {"name": "Stop the socket and the service: no more writes",
         "ansible.builtin.command": f"systemctl stop {slug}.socket {slug}.service"},
        {"name": "Take a verified backup (flask --app app backup, as the app's user)",
         "ansible.builtin.command": f"systemctl start {slug}-backup.service"},
        {"name": "Read what the backup recorded", "ansible.builtin.slurp": {"src": f"{state}/backups/last.json"},
         "register": "last"},
        {"name": "Remember it", "ansible.builtin.set_fact": {"vgen_backup": "{{ last.content | b64decode | from_json }}"}},
        {"name": "Stop unless the backup is verified",
         "ansible.builtin.fail": {"msg": "the backup failed: {{ vgen_backup.error }}"},
         "when": "not (vgen_backup.verified | bool) or vgen_backup.error is not none"},
        {"name": "Carry the backup", "ansible.builtin.fetch": {"src": "{{ vgen_backup.file }}",
                                                               "dest": "{{ vgen_carry }}/backup.db", "flat": True}},
        {"name": "Carry the secret key (sessions stay valid)",
         "ansible.builtin.fetch": {"src": f"{state}/secret_key", "dest": "{{ vgen_carry }}/secret_key",
                                   "flat": True, "fail_on_missing": False}},
        {"name": "Carry the settings file",
         "ansible.builtin.fetch": {"src": f"/etc/vgen/{slug}.env", "dest": "{{ vgen_carry }}/settings.env",
                                   "flat": True, "fail_on_missing": False}},
    ])
    rows = f"{backup}.tables.values() | sum"
    restore = play(f"Restore {slug} on {target.name}, check its health, serve it", "target", [
        {"name": "A backups folder the app's user owns",
         "ansible.builtin.shell": f"install -d -m 0700 {state}/backups && {own}{state}/backups"},
        {"name": "Bring the backup", "ansible.builtin.copy": {"src": "{{ vgen_carry }}/backup.db",
                                                              "dest": restore_file, "mode": "0600"}},
        {"name": "Bring the secret key",
         "ansible.builtin.copy": {"src": "{{ vgen_carry }}/secret_key", "dest": f"{state}/secret_key", "mode": "0600"},
         "when": "(vgen_carry ~ '/secret_key') is file"},
        {"name": "Both the app's user's", "ansible.builtin.shell": f"{own}{restore_file} {state}/secret_key"},
        {"name": "Bring the settings file",
         "ansible.builtin.copy": {"src": "{{ vgen_carry }}/settings.env", "dest": f"/etc/vgen/{slug}.env", "mode": "0600"},
         "when": "(vgen_carry ~ '/settings.env') is file"},
        # The very database, carried: its logins stay valid (restore ends them otherwise).
        {"name": "Restore it (flask --app app restore: verifies the file and the restored rows)",
         "ansible.builtin.command": f"{as_app} restore --keep-sessions /var/lib/{slug}/backups/{moved_name}",
         "register": "restored"},
        {"name": "Every row of the backup arrived",
         "ansible.builtin.assert": {"that": f"restored.stdout is search('\\\\(' ~ ({rows}) ~ ' rows? in ')",
                                    "fail_msg": f"restore says {{{{ restored.stdout }}}}; the backup had "
                                                f"{{{{ {rows} }}}} rows"}},
        {"name": "Tell vgen what happened",
         "ansible.builtin.copy": {"content": "{{ restored.stdout }}\n", "dest": "{{ vgen_carry }}/restored.txt"},
         "delegate_to": "localhost"},
        {"name": "Start its socket", "ansible.builtin.command": f"systemctl enable --now {slug}.socket"},
        {"name": "Ask it for /healthz through its socket",
         "ansible.builtin.uri": {"url": f"http://127.0.0.1:{port}/healthz"},
         "register": "health", "until": "health.status == 200", "retries": 30, "delay": 1},
        {"name": "Enable its nginx site", "ansible.builtin.file": {"src": f"../sites-available/{slug}.conf",
                                                                   "dest": site, "state": "link"}},
        {"name": "Reload nginx", "ansible.builtin.shell": RELOAD_AND_DRAIN},
        {"name": "Ask it for /healthz through nginx",
         "ansible.builtin.uri": {"url": "http://127.0.0.1/healthz", "headers": {"Host": name}},
         "register": "health", "until": "health.status == 200", "retries": 30, "delay": 1},
    ])
    undo_target = play(f"Take the half-moved {slug} out of service on {target.name}", "target", [
        {"name": "No nginx site", "ansible.builtin.file": {"path": site, "state": "absent"}},
        {"name": "No socket, no service",
         "ansible.builtin.command": f"systemctl disable --now {slug}.socket {slug}.service"},
        {"name": "Reload nginx", "ansible.builtin.shell": RELOAD_AND_DRAIN},
    ], ignore_unreachable=True, ignore_errors=True, any_errors_fatal=False)
    undo_source = play(f"Put {slug} back into service on {source.name}", "source", [
        {"name": "Its site instead of the moving one",
         "ansible.builtin.file": {"src": f"../sites-available/{slug}.conf", "dest": site, "state": "link"}},
        {"name": "No moving site", "ansible.builtin.file": {"path": moving_link, "state": "absent"}},
        {"name": "No moving site", "ansible.builtin.file": {"path": moving, "state": "absent"}},
        {"name": "Its socket", "ansible.builtin.command": f"systemctl start {slug}.socket"},
        {"name": "Reload nginx", "ansible.builtin.shell": RELOAD_AND_DRAIN},
    ])
    removed = [f"/etc/systemd/system/{slug}{unit}" for unit in (".socket", ".service", "-migrate.service",
                                                                 "-backup.service")]
    removed += [f"/etc/cron.d/{slug}", site, moving_link, moving, f"/etc/nginx/sites-available/{slug}.conf",
                f"/srv/vgen/{slug}", f"/var/lib/{slug}"]
    retire = play(f"Retire {slug} on {source.name}; keep its data in {retired}", "source", [
        *deploy.reach_tasks(),
        {"name": "Stop and disable its units",
         "ansible.builtin.command": f"systemctl disable --now {slug}.socket {slug}.service"},
        {"name": "Keep its data and settings as a safety copy",
         "ansible.builtin.shell": f"install -d -m 0700 {RETIRED} {retired} && "
                                  f"if [ -d {state} ]; then mv {state} {retired}/data; fi && "
                                  f"if [ -f /etc/vgen/{slug}.env ]; then mv /etc/vgen/{slug}.env {retired}/; fi"},
        {"name": "Remove its release, units, cron file and nginx site",
         "ansible.builtin.file": {"path": "{{ item }}", "state": "absent"}, "loop": removed},
        {"name": "Tell systemd", "ansible.builtin.command": "systemctl daemon-reload"},
        {"name": "Reload nginx", "ansible.builtin.shell": RELOAD_AND_DRAIN},
    ])
    playbooks = {"move": [lay, stop_writes, restore], "undo": [undo_target, undo_source], "retire": [retire]}
    paths = {}
    for key, plays in playbooks.items():
        path = paths[key] = build / f"{key}.yml"
        path.write_text(f"# Written by vgen move {slug} {target.name}; regenerated each time. Run it with:\n"
                        f"#   ansible-playbook -i {inventory} {path}\n"
                        + deploy.to_yaml(plays))
    return inventory, paths


# nginx reloads asynchronously: the workers of the old configuration finish their
# requests (which may still reach the app) while the new ones start. Wait until they
# are gone, so that stopping the app next cannot cut a request short.
RELOAD_AND_DRAIN = """\
master=$(cat /run/nginx.pid)
old=$(cat /proc/$master/task/$master/children)
nginx -t -q && systemctl reload nginx || exit 1
for i in $(seq 600); do
  busy=
  for pid in $old; do kill -0 "$pid" 2>/dev/null && busy=1; done
  [ -z "$busy" ] && exit 0
  sleep 0.05
done
echo "nginx workers of the old configuration still busy after 30 s" >&2
exit 1
"""


def moving_site(slug: str, name: str) -> str:
    return f"""# {slug} is moving to another host (vgen move): every request gets 503 and
# "try again" until it serves there. Written by vgen move, removed when the move ends.
server {{
    listen 80;
    listen [::]:80;
    server_name {name};
    server_tokens off;
    access_log /var/log/nginx/{slug}.access.log;
    location / {{
        default_type text/plain;
        add_header Retry-After {RETRY_AFTER_SECONDS} always;
        return 503 "{slug} is moving to another server: try again in a minute.\\n";
    }}
}}
"""
