"""The port registry, ``ports.toml``: which vertical listens on which loopback port.

A slug's preferred port is a stable hash of the slug into the range; on a collision the
next free port is probed. Once written, a port never moves. New slugs are placed in
sorted order and appended, so the same inputs give the same file on any machine, and the
file is rewritten atomically with its comments kept (tomlkit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from .errors import Problem, VgenError
from .fsutil import atomic_write_text

DEFAULT_FIRST = 8100
DEFAULT_LAST = 8999
# Ports in the default range that well-known services use; never handed out.
WELL_KNOWN = frozenset({8125, 8200, 8300, 8301, 8302, 8443, 8500, 8600, 8888, 8983})

HEADER = """\
# The port registry: which vertical listens on which loopback port.
# vgen assigns ports (a stable hash of the slug into the range, probing on collisions)
# and never moves one once written. Edit by hand only to retire or pin a port.
"""


@dataclass
class Registry:
    path: Path
    first: int = DEFAULT_FIRST
    last: int = DEFAULT_LAST
    reserved: frozenset[int] = WELL_KNOWN
    ports: dict[str, int] = field(default_factory=dict)
    doc: tomlkit.TOMLDocument | None = None


def preferred_port(slug: str, first: int, last: int) -> int:
    """The slug's hash into [first, last]; the same on every machine and process."""
    digest = hashlib.sha256(slug.encode("utf-8")).digest()
    return first + int.from_bytes(digest[:8], "big") % (last - first + 1)


def load(path: Path) -> Registry:
    """Read ports.toml (a missing file is an empty registry with the default range)."""
    path = Path(path)
    if not path.exists():
        return Registry(path=path)
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (TOMLKitError, UnicodeDecodeError) as exc:
        raise VgenError(f"{path.name} is not valid", [Problem(path.name, "", f"TOML syntax error: {exc}")]) from None
    problems = []
    unknown = set(doc) - {"range", "ports"}
    for key in sorted(unknown):
        problems.append(Problem(path.name, "", f'unknown key "{key}" (allowed: range, ports)'))
    rng = doc.get("range", {})
    if not isinstance(rng, dict):
        problems.append(Problem(path.name, "", f"range must be a table ([range] with first, last, reserved), not {_shown(rng)}"))
        rng = {}
    table = doc.get("ports", {})
    if not isinstance(table, dict):
        problems.append(Problem(path.name, "", f"ports must be a table ([ports] with one slug = port line each), not {_shown(table)}"))
        table = {}
    first = rng.get("first", DEFAULT_FIRST)
    last = rng.get("last", DEFAULT_LAST)
    reserved = rng.get("reserved", None)
    for key in set(rng) - {"first", "last", "reserved"}:
        problems.append(Problem(path.name, "[range]", f'unknown key "{key}" (allowed: first, last, reserved)'))
    if not _is_port(first) or not _is_port(last) or first > last:
        problems.append(Problem(path.name, "[range]", f"first ({first}) and last ({last}) must be ports from 1024 to 65535 with first <= last"))
    if reserved is not None and (not isinstance(reserved, list) or not all(_is_port(p) for p in reserved)):
        problems.append(Problem(path.name, "[range]", "reserved must be a list of ports"))
        reserved = None
    ports = {}
    for slug, port in table.items():
        if not _is_port(port):
            problems.append(Problem(path.name, "[ports]", f'"{slug}" = {port!r} is not a port number'))
        else:
            ports[slug] = int(port)
    if problems:
        raise VgenError(f"{path.name} is not valid", problems)
    reserved_set = WELL_KNOWN if reserved is None else frozenset(int(p) for p in reserved)
    return Registry(path=path, first=int(first), last=int(last), reserved=reserved_set,
                    ports=ports, doc=doc)


def assign(registry: Registry, slugs) -> dict[str, int]:
    """Give every slug without a port its port; return only the new assignments.

    New slugs are placed in sorted order so the result does not depend on the order
    they are given in. Existing entries are never changed.
    """
    taken = set(registry.ports.values()) | set(registry.reserved)
    size = registry.last - registry.first + 1
    new = {}
    for slug in sorted(set(slugs) - set(registry.ports)):
        start = preferred_port(slug, registry.first, registry.last)
        for step in range(size):
            port = registry.first + (start - registry.first + step) % size
            if port not in taken:
                break
        else:
            raise VgenError(
                f"{registry.path.name}: no free port left in {registry.first}-{registry.last} for "
                f'"{slug}" ({len(registry.ports)} assigned, {len(registry.reserved)} reserved): '
                "widen [range] first/last"
            )
        taken.add(port)
        new[slug] = port
        registry.ports[slug] = port
    return new


def save(registry: Registry) -> None:
    """Write the registry atomically, keeping comments; new entries go last, sorted."""
    doc = registry.doc
    if doc is None:
        doc = tomlkit.parse(HEADER)
        rng = tomlkit.table()
        rng.add("first", registry.first)
        rng.add("last", registry.last)
        rng.add(tomlkit.comment("stays below the kernel's ephemeral range (32768 and up)"))
        doc.add("range", rng)
    table = doc.get("ports")
    if table is None:
        table = tomlkit.table()
        doc.add("ports", table)
    for slug in sorted(s for s in registry.ports if s not in table):
        table.add(slug, registry.ports[slug])
    atomic_write_text(registry.path, tomlkit.dumps(doc))
    registry.doc = doc


def check(registry: Registry, slugs) -> list[Problem]:
    """Every problem in the registry against the verticals that exist."""
    name = registry.path.name
    problems = []
    slugs = set(slugs)
    owners: dict[int, list[str]] = {}
    for slug, port in registry.ports.items():
        owners.setdefault(port, []).append(slug)
    for port, names in sorted(owners.items()):
        if len(names) > 1:
            problems.append(_shared(registry, port, names))
    for slug, port in sorted(registry.ports.items()):
        problems.extend(_misplaced(registry, slug))
        if slug not in slugs:
            problems.append(Problem(name, "", f'"{slug}" has a port but no verticals/{slug}.toml'))
    for slug in sorted(slugs - set(registry.ports)):
        problems.append(Problem(name, "", f'vertical "{slug}" has no port (vgen generate {slug} assigns one)'))
    return problems


def port_problems(registry: Registry, slug: str) -> list[Problem]:
    """Why the slug's port must not be used: shared with another entry, outside the
    range, or reserved (the same lines `vgen ports check` prints); [] when it is fine."""
    port = registry.ports[slug]
    problems = []
    sharing = [s for s, p in registry.ports.items() if p == port]
    if len(sharing) > 1:
        problems.append(_shared(registry, port, sharing))
    return problems + _misplaced(registry, slug)


def forget(registry: Registry, slug: str) -> None:
    """Drop the slug's entry (to undo an assignment that was never used); save() writes it."""
    registry.ports.pop(slug, None)
    table = registry.doc.get("ports") if registry.doc is not None else None
    if table is not None and slug in table:
        del table[slug]


def _shared(registry: Registry, port: int, slugs) -> Problem:
    return Problem(registry.path.name, "", f"port {port} is given to more than one vertical: {', '.join(sorted(slugs))}")


def _misplaced(registry: Registry, slug: str) -> list[Problem]:
    name, port = registry.path.name, registry.ports[slug]
    problems = []
    if not registry.first <= port <= registry.last:
        problems.append(Problem(name, "", f'"{slug}" = {port} is outside [range] {registry.first}-{registry.last}'))
    if port in registry.reserved:
        problems.append(Problem(name, "", f'"{slug}" = {port} is a reserved port'))
    return problems


def _shown(value) -> str:
    """A TOML value as the user wrote it, for an error message."""
    text = value.as_string().strip() if hasattr(value, "as_string") else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1024 <= value <= 65535
