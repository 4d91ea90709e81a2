"""hosts.toml: the hosts a fleet runs on, and which vertical lives on which host.

    [defaults]
    host = "web1"                  # where a vertical without a placement lives

    [hosts.web1]
    address = "10.0.0.11"          # what SSH connects to
    user = "root"                  # optional, default root
    vars = { ansible_ssh_private_key_file = "~/.ssh/fleet" }   # optional Ansible host variables

    [placement]
    cheesemaking = "web2"

The file is optional: without it every vertical lives on this one host. A vertical keeps
its port from ports.toml wherever it lives. Problems name the file, the line and the
rule, as `vgen check` prints them; changes (`set_placement`) keep the file's comments
and layout (tomlkit) and are written atomically.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from .errors import Problem, VgenError
from .fsutil import atomic_write_text

HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# A DNS name: labels of letters, digits and hyphens, not starting or ending with one.
DNS_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP_KEYS = {"defaults", "hosts", "placement"}
HOST_KEYS = {"address", "user", "vars"}
DEFAULTS_KEYS = {"host"}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    user: str = "root"
    vars: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Fleet:
    hosts: dict[str, Host]
    default: str
    placement: dict[str, str]  # slug -> host name, as written

    def host_of(self, slug: str) -> Host:
        return self.hosts[self.placement.get(slug, self.default)]

    def verticals_on(self, host: str, slugs: list[str]) -> list[str]:
        return [slug for slug in slugs if self.host_of(slug).name == host]


def load(path: Path, slugs: list[str]) -> tuple[Fleet | None, list[Problem]]:
    """The fleet hosts.toml describes (None when it has problems, or when the file does
    not exist), and every problem found. slugs: the project's verticals."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, []
    except (OSError, UnicodeDecodeError) as e:
        return None, [Problem(path.name, "", f"cannot be read: {e}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return None, [Problem(path.name, "", f"is not valid TOML: {e}")]
    problems: list[Problem] = []

    def problem(line_of: tuple[str, str], message: str) -> None:
        where = f"line {_line(text, *line_of) or _line(text, line_of[0], '') or 1}"
        problems.append(Problem(path.name, where, message))

    for key in sorted(set(data) - TOP_KEYS):
        at = ("", key) if _line(text, "", key) else (key, "")  # key = ..., or a [key] table
        problem(at, f"unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS))})")

    hosts: dict[str, Host] = {}
    tables = data.get("hosts", {})
    if not isinstance(tables, dict) or not tables:
        problem(("", "hosts"), "[hosts.NAME] tables must name at least one host")
        tables = {}
    addresses: dict[str, str] = {}
    for name, table in tables.items():
        section = f"hosts.{name}"
        if not HOST_RE.match(name):
            problem((section, ""), f"host name {name!r} must be lower-case letters, digits and hyphens, "
                                   "starting with a letter")
        if not isinstance(table, dict):
            problem(("hosts", name), f"{name} must be a table ([hosts.{name}])")
            continue
        for key in sorted(set(table) - HOST_KEYS):
            problem((section, key), f"unknown key {key!r} in [hosts.{name}] (known: {', '.join(sorted(HOST_KEYS))})")
        address = table.get("address")
        if not isinstance(address, str) or not _address_ok(address):
            problem((section, "address"), f"[hosts.{name}] address must be an IP address or a host name "
                                          "SSH can connect to")
            continue
        if address.lower() in addresses:
            problem((section, "address"), f"[hosts.{name}] has the address {address} of "
                                          f"[hosts.{addresses[address.lower()]}]: one host, one entry")
        addresses.setdefault(address.lower(), name)
        user = table.get("user", "root")
        if not isinstance(user, str) or not USER_RE.match(user):
            problem((section, "user"), f"[hosts.{name}] user must be a login name such as root or deploy")
        variables = table.get("vars", {})
        if not isinstance(variables, dict) or not all(
            VAR_RE.match(k) and isinstance(v, (str, int, float, bool)) for k, v in variables.items()
        ):
            problem((section, "vars"), f"[hosts.{name}] vars must be a table of Ansible variables "
                                       "(names of letters, digits and _; plain values)")
            variables = {}
        hosts[name] = Host(name, address, user if isinstance(user, str) else "root", dict(variables))

    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        problem(("", "defaults"), "defaults must be a table ([defaults] with host = ...)")
        defaults = {}
    for key in sorted(set(defaults) - DEFAULTS_KEYS):
        problem(("defaults", key), f"unknown key {key!r} in [defaults] (known: host)")
    default = defaults.get("host")
    if default is None and len(hosts) == 1:
        default = next(iter(hosts))
    if default is None:
        problem(("defaults", "host"), "[defaults] host must name the host where verticals without a "
                                      "placement live")
    elif default not in tables:
        problem(("defaults", "host"), f"[defaults] host {default!r} is not one of the [hosts.NAME] tables")

    placement = data.get("placement", {})
    if not isinstance(placement, dict):
        problem(("", "placement"), "placement must be a table ([placement] with slug = \"host\" lines)")
        placement = {}
    known = set(slugs)
    for slug, host in placement.items():
        if slug not in known:
            problem(("placement", slug), f"[placement] {slug}: no vertical of that name (verticals/{slug}.toml)")
        if not isinstance(host, str) or host not in tables:
            problem(("placement", slug), f"[placement] {slug} = {host!r}: not one of the [hosts.NAME] tables")

    if problems:
        return None, problems
    return Fleet(hosts=hosts, default=default, placement=dict(placement)), []


def load_or_fail(path: Path, slugs: list[str]) -> Fleet | None:
    fleet, problems = load(path, slugs)
    if problems:
        raise VgenError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {Path(path).name}", problems)
    return fleet


def set_placement(path: Path, slug: str, host: str) -> None:
    """Place slug on host in hosts.toml, keeping every comment; written atomically."""
    document = tomlkit.parse(Path(path).read_text(encoding="utf-8"))
    if "placement" not in document:
        document.add("placement", tomlkit.table())
    document["placement"][slug] = host
    atomic_write_text(Path(path), tomlkit.dumps(document))


def _address_ok(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return bool(DNS_RE.match(address)) and not address.replace(".", "").isdigit()


def _line(text: str, section: str, key: str) -> int | None:
    """The line of `key = ...` in `[section]`, or of the `[section]` header itself when
    key is "" (section "" is the top of the file, before any header); None when absent."""
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        match = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if match and not stripped.startswith("[["):
            current = re.sub(r"\s*\.\s*", ".", match.group(1)).replace('"', "")
            if current == section and not key:
                return number
            continue
        if key and current == section and re.match(rf'^"?{re.escape(key)}"?\s*=', stripped):
            return number
    return None
