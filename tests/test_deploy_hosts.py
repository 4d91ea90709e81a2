"""`vgen deploy` to three booted containers over SSH, with the playbook vgen writes.

The five examples are placed across three hosts in hosts.toml; ansible-playbook (from
ansible-core) reaches each host as root with the test key. The tests run in file order
on one xdist worker and share the hosts.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import cli

from conftest import EXAMPLES, example_answers, render_app

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.xdist_group("systemd")]

PLACEMENT = {"cheesemaking": "web1", "childmilestone": "web1", "coachboard": "web2", "honeybees": "web2",
             "shiftfill": "web3"}


@pytest.fixture(scope="module")
def three_hosts(tmp_path_factory):
    import hosts

    if os.environ.get(hosts.OPT_OUT) == "1":
        pytest.skip(f"{hosts.OPT_OUT}=1: the tests under real systemd are left out, as asked")
    try:
        with hosts.Fleet(tmp_path_factory.mktemp("deploy-hosts"), count=3) as fleet:
            yield {f"web{i + 1}": host for i, host in enumerate(fleet.hosts)}
    except hosts.Unavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def project_root(template_repo, three_hosts, tmp_path_factory):
    """A clone of the template with the five examples generated and hosts.toml naming
    the three containers."""
    root = tmp_path_factory.mktemp("deploy") / "vgen"
    subprocess.run(["git", "clone", "-q", "--local", str(template_repo), str(root)], check=True)
    for slug in EXAMPLES:
        render_app(template_repo, example_answers(slug), root / "apps" / slug)
    lines = ['[defaults]\nhost = "web1"\n']
    for name, host in three_hosts.items():
        lines.append(f'[hosts.{name}]\naddress = "{host.address}"\n'
                     f'vars = {{ ansible_ssh_private_key_file = "{host.key}", '
                     f'ansible_ssh_common_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" }}\n')
    lines.append("[placement]\n" + "".join(f'{slug} = "{host}"\n' for slug, host in PLACEMENT.items()))
    (root / "hosts.toml").write_text("\n".join(lines))
    return root


def deploy(root: Path, *args: str):
    return CliRunner().invoke(cli.main, ["--project", str(root), "deploy", *args, "--out", str(root / "apps")])


def healthz(host, slug: str) -> int:
    name = example_answers(slug).get("domain") or f"{slug}.localhost"
    request = urllib.request.Request(f"http://{host.address}/healthz", headers={"Host": name})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def current(host, slug: str) -> str | None:
    link = host.root / f"srv/vgen/{slug}/current"
    return os.readlink(link).removeprefix("releases/") if os.path.islink(link) else None


def tree_digest(host) -> str:
    """A hash of what a deploy lays on a host: every file, link and mode under them."""
    digest = hashlib.sha256()
    for top in ("srv/vgen", "etc/systemd/system", "etc/nginx", "etc/vgen", "etc/cron.d", "usr/local/sbin"):
        for path in sorted((host.root / top).rglob("*")):
            digest.update(str(path.relative_to(host.root)).encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(oct(path.stat().st_mode).encode() + path.read_bytes())
    return digest.hexdigest()


def test_deploy_places_every_example_on_its_host(project_root, three_hosts):
    result = deploy(project_root, "--all")
    assert result.exit_code == 0, result.output
    ports = tomllib.loads((project_root / "ports.toml").read_text())["ports"]
    for slug, name in PLACEMENT.items():
        host = three_hosts[name]
        assert healthz(host, slug) == 200, (slug, name)
        unit = (host.root / f"etc/systemd/system/{slug}.socket").read_text()
        assert f"ListenStream=127.0.0.1:{ports[slug]}\n" in unit
        for other in set(three_hosts) - {name}:  # only on its own host
            assert not (three_hosts[other].root / f"srv/vgen/{slug}").exists()
        assert re.search(rf"^\s*{name}\s+{slug}\s+[0-9a-f]{{12}}\s+release [0-9a-f]{{12}} ready", result.output, re.M), \
            result.output
    assert "PLAY RECAP" in result.output


def test_a_second_deploy_changes_nothing(project_root, three_hosts):
    result = deploy(project_root, "--all")
    assert result.exit_code == 0, result.output
    for name in three_hosts:
        assert re.search(rf"^{name}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", result.output, re.M), result.output
    assert result.output.count("is already current; nothing changed") == len(PLACEMENT)


def change_every_app(root: Path, marker: str) -> None:
    for slug in EXAMPLES:
        readme = root / "apps" / slug / "README.md"
        readme.write_text(readme.read_text() + f"\n{marker}\n")


def test_check_mode_changes_nothing_on_any_host(project_root, three_hosts):
    change_every_app(project_root, "A change check mode must not lay.")
    before = {name: tree_digest(host) for name, host in three_hosts.items()}
    result = deploy(project_root, "--all", "--check", "--diff")
    assert result.exit_code == 0, result.output
    assert {name: tree_digest(host) for name, host in three_hosts.items()} == before
    assert "check mode: not activated" in result.output


def test_a_failing_release_stops_the_rollout_and_later_hosts_keep_theirs(project_root, three_hosts):
    """web1 takes its new releases; coachboard's fails its health check on web2 and is
    rolled back there; web3 is never touched."""
    old = {slug: current(three_hosts[name], slug) for slug, name in PLACEMENT.items()}
    change_every_app(project_root, "A change that reaches every host.")
    custom = project_root / "apps/coachboard/app/custom.py"
    custom.write_text(custom.read_text() + '\nraise RuntimeError("coachboard is broken on purpose")\n')
    web3 = tree_digest(three_hosts["web3"])
    result = deploy(project_root, "--all")
    assert result.exit_code == 1, result.output
    assert re.search(r"^\s*web2\s+coachboard\s+[0-9a-f]{12}\s+FAILED: release [0-9a-f]{12} refused", result.output, re.M), \
        result.output
    assert current(three_hosts["web2"], "coachboard") == old["coachboard"]
    assert healthz(three_hosts["web2"], "coachboard") == 200
    for slug in ("cheesemaking", "childmilestone"):  # web1 went first, and is on the new releases
        assert current(three_hosts["web1"], slug) != old[slug]
    assert current(three_hosts["web3"], "shiftfill") == old["shiftfill"]
    assert tree_digest(three_hosts["web3"]) == web3
    assert re.search(r"^\s*web3\s+shiftfill\s+[0-9a-f]{12}\s+not reached", result.output, re.M), result.output


def test_a_host_that_is_down_stops_the_rollout_by_name(project_root, three_hosts):
    custom = project_root / "apps/coachboard/app/custom.py"
    custom.write_text(custom.read_text().replace('\nraise RuntimeError("coachboard is broken on purpose")\n', ""))
    three_hosts["web2"].poweroff()
    try:
        web3 = tree_digest(three_hosts["web3"])
        result = deploy(project_root, "--all")
        assert result.exit_code == 1, result.output
        assert re.search(r"^fatal: \[web2\]: (UNREACHABLE|FAILED)!", result.output, re.M), result.output
        assert tree_digest(three_hosts["web3"]) == web3
        for slug in ("cheesemaking", "childmilestone"):  # web1 keeps serving
            assert healthz(three_hosts["web1"], slug) == 200
    finally:
        three_hosts["web2"].boot()
    result = deploy(project_root, "--all")  # back up: the rollout completes
    assert result.exit_code == 0, result.output
    for slug, name in PLACEMENT.items():
        assert healthz(three_hosts[name], slug) == 200
