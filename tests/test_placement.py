"""hosts.toml: hosts, the default host and the placement of verticals on them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from generator import cli, placement

SLUGS = ["cheesemaking", "honeybees", "shiftfill"]

GOOD = """\
# The fleet: two boxes.
[defaults]
host = "web1"          # where the rest live

[hosts.web1]
address = "10.0.0.11"
vars = { ansible_ssh_private_key_file = "~/.ssh/fleet" }

[hosts.web2]
address = "web2.example.com"
user = "deploy"

[placement]
cheesemaking = "web2"   # it took off
"""


def write(tmp_path, text):
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def test_a_fleet_places_each_vertical(tmp_path):
    fleet, problems = placement.load(write(tmp_path, GOOD), SLUGS)
    assert problems == []
    assert fleet.host_of("cheesemaking") == placement.Host("web2", "web2.example.com", "deploy", {})
    assert fleet.host_of("honeybees").name == "web1"
    assert fleet.host_of("honeybees").user == "root"
    assert fleet.hosts["web1"].vars == {"ansible_ssh_private_key_file": "~/.ssh/fleet"}
    assert fleet.verticals_on("web1", SLUGS) == ["honeybees", "shiftfill"]


def test_no_file_is_one_local_host(tmp_path):
    assert placement.load(tmp_path / "hosts.toml", SLUGS) == (None, [])


def test_a_single_host_is_the_default(tmp_path):
    fleet, problems = placement.load(write(tmp_path, '[hosts.box]\naddress = "192.0.2.7"\n'), SLUGS)
    assert problems == [] and fleet.host_of("shiftfill").name == "box"


@pytest.mark.parametrize("change, line, message", [
    (("[placement]\ncheesemaking = \"web2\"", "[placement]\ncheesemaking = \"web9\""), 14,
     "[placement] cheesemaking = 'web9': not one of the [hosts.NAME] tables"),
    (("[placement]\n", "[placement]\nnosuch = \"web1\"\n"), 14,
     "[placement] nosuch: no vertical of that name (verticals/nosuch.toml)"),
    (('address = "web2.example.com"', 'address = "10.0.0.11"'), 10,
     "[hosts.web2] has the address 10.0.0.11 of [hosts.web1]: one host, one entry"),
    (('user = "deploy"', 'usr = "deploy"'), 11,
     "unknown key 'usr' in [hosts.web2] (known: address, user, vars)"),
    (('host = "web1"', 'host = "web3"'), 3,
     "[defaults] host 'web3' is not one of the [hosts.NAME] tables"),
    (('address = "10.0.0.11"', 'address = "not an address!"'), 6,
     "[hosts.web1] address must be an IP address or a host name SSH can connect to"),
    (("[defaults]", "[defualts]"), 2, "unknown key 'defualts' (known: defaults, hosts, placement)"),
])
def test_mistakes_name_the_file_the_line_and_the_rule(tmp_path, change, line, message):
    text = GOOD.replace(*change)
    assert text != GOOD
    fleet, problems = placement.load(write(tmp_path, text), SLUGS)
    assert fleet is None
    assert f"hosts.toml: line {line}: {message}" in [str(p) for p in problems]


def test_vgen_check_reports_hosts_toml(project):
    (project.root / "hosts.toml").write_text(GOOD.replace('cheesemaking = "web2"', 'cheesemaking = "web9"'))
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "check"])
    assert result.exit_code == 1
    assert "  hosts.toml: line 14: [placement] cheesemaking = 'web9': not one of the [hosts.NAME] tables" in result.output


def test_vgen_check_lists_every_hosts_toml_mistake_at_once(project):
    """An unknown host in a placement, a duplicate address and a typo in a key: each
    refused by vgen check with the file, the line and the rule."""
    text = (GOOD.replace('cheesemaking = "web2"', 'cheesemaking = "web9"')
                .replace('address = "web2.example.com"', 'address = "10.0.0.11"')
                .replace('user = "deploy"', 'usr = "deploy"'))
    (project.root / "hosts.toml").write_text(text)
    result = CliRunner().invoke(cli.main, ["--project", str(project.root), "check"])
    assert result.exit_code == 1
    assert "Error: 3 problems found" in result.output, result.output
    for line in ("  hosts.toml: line 14: [placement] cheesemaking = 'web9': not one of the [hosts.NAME] tables",
                 "  hosts.toml: line 10: [hosts.web2] has the address 10.0.0.11 of [hosts.web1]: one host, one entry",
                 "  hosts.toml: line 11: unknown key 'usr' in [hosts.web2] (known: address, user, vars)"):
        assert line in result.output, result.output


def test_set_placement_keeps_comments_and_writes_atomically(tmp_path):
    path = write(tmp_path, GOOD)
    placement.set_placement(path, "honeybees", "web2")
    text = path.read_text()
    assert "# it took off" in text and "# The fleet: two boxes." in text
    fleet, problems = placement.load(path, SLUGS)
    assert problems == [] and fleet.host_of("honeybees").name == "web2"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.toml"]  # no temp file left


def three_hosts_fleet() -> placement.Fleet:
    hosts = {name: placement.Host(name, f"10.0.0.1{i}") for i, name in enumerate(("web1", "web2", "web3"), start=1)}
    return placement.Fleet(hosts=hosts, default="web1", placement={"cheesemaking": "web2"})


def test_a_vertical_in_service_elsewhere_than_its_placement_moves_from_there():
    from generator.move import misplaced

    fleet = three_hosts_fleet()
    found = {"web1": {"cheesemaking", "honeybees"}, "web2": set(), "web3": {"shiftfill"}}
    moves = misplaced(fleet, SLUGS, found, {})
    assert {slug: host.name for slug, host in moves.items()} == {"cheesemaking": "web1", "shiftfill": "web3"}
    # In service where it is placed, or nowhere yet (a first deploy): nothing moves.
    assert misplaced(fleet, SLUGS, {"web1": {"honeybees"}, "web2": {"cheesemaking"}, "web3": set()}, {}) == {}
    assert misplaced(fleet, SLUGS, {"web1": set(), "web2": set(), "web3": set()}, {}) == {}
    # A host down that holds none of them, each found where it is placed: nothing to stop.
    assert misplaced(fleet, ["cheesemaking"], {"web1": set(), "web2": {"cheesemaking"}}, {"web3": "no route"}) == {}


@pytest.mark.parametrize("found, unreachable, message", [
    ({"web1": {"cheesemaking"}, "web2": {"cheesemaking"}, "web3": set()}, {},
     "[placement] cheesemaking: in service on web1 and web2, placed on web2: keep one copy"),
    ({"web1": {"cheesemaking"}, "web3": set()}, {"web2": "Connection timed out"},
     "[placement] cheesemaking: in service on web1, placed on web2, which cannot be reached (Connection timed out)"),
    ({"web1": set(), "web2": set()}, {"web3": "No route to host"},
     "[placement] cheesemaking: not in service on web2, where it is placed, and web3 cannot be reached to tell "
     "whether it lives there, with its data (No route to host)"),
])
def test_a_vertical_in_two_places_or_behind_a_silent_host_stops_the_deploy(found, unreachable, message):
    from generator.errors import VgenError
    from generator.move import misplaced

    with pytest.raises(VgenError) as e:
        misplaced(three_hosts_fleet(), ["cheesemaking"], found, unreachable)
    assert str(e.value).startswith("vgen deploy changed nothing: 1 vertical cannot be rolled out")
    assert f"hosts.toml: {message}" in str(e.value)
