"""The port registry: deterministic, stable, atomic, checked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator import ports
from generator.errors import VgenError

SLUGS = ["cheesemaking", "honeybees", "childmilestone", "coachboard", "shiftfill"]


def allocate(path: Path, slugs) -> dict:
    registry = ports.load(path)
    ports.assign(registry, slugs)
    ports.save(registry)
    return dict(ports.load(path).ports)


def test_same_ports_in_separate_processes_with_different_hash_seeds(tmp_path):
    script = (
        "import sys; from pathlib import Path; from generator import ports\n"
        "r = ports.load(Path(sys.argv[1])); ports.assign(r, sys.argv[2:]); ports.save(r)\n"
    )
    files = []
    for seed, order in (("1", SLUGS), ("2", list(reversed(SLUGS))), ("random", SLUGS[2:] + SLUGS[:2])):
        path = tmp_path / f"ports-{seed}.toml"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-c", script, str(path), *order], check=True, env=env,
                       cwd=Path(__file__).resolve().parents[1])
        files.append(path.read_text())
    assert files[0] == files[1] == files[2]


def test_adding_removing_reordering_moves_no_port(tmp_path):
    path = tmp_path / "ports.toml"
    first = allocate(path, SLUGS)
    second = allocate(path, list(reversed(SLUGS)) + ["newcomer", "another"])
    assert {s: second[s] for s in SLUGS} == first
    # A vertical removed from the specs keeps its entry; the others never move.
    third = allocate(path, SLUGS[1:])
    assert third == second


def test_preferred_port_is_a_stable_hash():
    assert ports.preferred_port("cheesemaking", 8100, 8999) == ports.preferred_port("cheesemaking", 8100, 8999)
    assert 8100 <= ports.preferred_port("x" * 30, 8100, 8999) <= 8999


def test_collisions_probe_to_the_next_free_port(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text("[range]\nfirst = 9000\nlast = 9003\nreserved = []\n\n[ports]\n")
    taken = {}
    for slug in ("a1", "b2", "c3", "d4"):
        taken.update(allocate(path, [slug]))
    assert sorted(taken.values()) == [9000, 9001, 9002, 9003]
    # Every slug got its preferred port or the next free one after it, wrapping around.
    registry = ports.load(path)
    assert len(set(registry.ports.values())) == 4


def test_probing_skips_reserved_ports(tmp_path):
    path = tmp_path / "ports.toml"
    slug = "honeybees"
    preferred = ports.preferred_port(slug, 8100, 8999)
    path.write_text(f"[range]\nfirst = 8100\nlast = 8999\nreserved = [{preferred}]\n")
    assert allocate(path, [slug])[slug] == (preferred + 1 if preferred < 8999 else 8100)


def test_a_full_range_is_a_clear_error(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text("[range]\nfirst = 9000\nlast = 9001\nreserved = []\n\n[ports]\na1 = 9000\nb2 = 9001\n")
    before = path.read_text()
    registry = ports.load(path)
    with pytest.raises(VgenError, match=r'no free port left in 9000-9001 for "c3" \(2 assigned, 0 reserved\): widen \[range\] first/last'):
        ports.assign(registry, ["c3"])
    assert path.read_text() == before


def test_comments_are_kept_and_new_entries_appended(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text("# my registry\n[range]\nfirst = 8100  # low end\nlast = 8999\n\n[ports]\n# pinned\nzeta = 8200\n")
    allocate(path, ["alpha"])
    text = path.read_text()
    assert text.startswith("# my registry\n[range]\nfirst = 8100  # low end\n")
    assert "# pinned\nzeta = 8200\nalpha = " in text


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "ports.toml"
    allocate(path, ["alpha"])
    assert [p.name for p in tmp_path.iterdir()] == ["ports.toml"]  # no temporary file left


def test_check_finds_every_problem(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text(
        "[range]\nfirst = 8100\nlast = 8999\n\n[ports]\n"
        "alpha = 8150\nbeta = 8150\ngamma = 9500\ndelta = 8443\norphan = 8160\n"
    )
    problems = ports.check(ports.load(path), ["alpha", "beta", "gamma", "delta", "nopport"])
    assert [str(p) for p in problems] == [
        "ports.toml: port 8150 is given to more than one vertical: alpha, beta",
        'ports.toml: "delta" = 8443 is a reserved port',
        'ports.toml: "gamma" = 9500 is outside [range] 8100-8999',
        'ports.toml: "orphan" has a port but no verticals/orphan.toml',
        'ports.toml: vertical "nopport" has no port (vgen generate nopport assigns one)',
    ]


@pytest.mark.parametrize("text, message", [
    ("[ports]\na = 'x'\n", 'ports.toml: [ports]: "a" = \'x\' is not a port number'),
    ("[range]\nfirst = 9000\nlast = 8000\n", "ports.toml: [range]: first (9000) and last (8000) must be ports from 1024 to 65535 with first <= last"),
    ("[rnage]\n", 'ports.toml: unknown key "rnage" (allowed: range, ports)'),
    ("range = 5\n", "ports.toml: range must be a table ([range] with first, last, reserved), not 5"),
    ("ports = 5\n", "ports.toml: ports must be a table ([ports] with one slug = port line each), not 5"),
    ("ports = [1, 2]\n", "ports.toml: ports must be a table ([ports] with one slug = port line each), not [1, 2]"),
])
def test_bad_registry_is_named(tmp_path, text, message):
    path = tmp_path / "ports.toml"
    path.write_text(text)
    with pytest.raises(VgenError) as info:
        ports.load(path)
    assert [str(p) for p in info.value.problems] == [message]


def test_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text("[ports\n")
    with pytest.raises(VgenError, match="ports.toml: TOML syntax error"):
        ports.load(path)


def test_committed_registry_matches_the_examples():
    root = Path(__file__).resolve().parents[1]
    registry = ports.load(root / "ports.toml")
    slugs = sorted(p.stem for p in (root / "verticals").glob("*.toml"))
    assert ports.check(registry, slugs) == []


def test_port_problems_of_one_vertical(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text("[ports]\nalpha = 8150\nbeta = 8150\ngamma = 9500\ndelta = 8443\nfine = 8160\n")
    registry = ports.load(path)
    assert [str(p) for p in ports.port_problems(registry, "beta")] == ["ports.toml: port 8150 is given to more than one vertical: alpha, beta"]
    assert [str(p) for p in ports.port_problems(registry, "gamma")] == ['ports.toml: "gamma" = 9500 is outside [range] 8100-8999']
    assert [str(p) for p in ports.port_problems(registry, "delta")] == ['ports.toml: "delta" = 8443 is a reserved port']
    assert ports.port_problems(registry, "fine") == []


def test_forget_drops_an_entry_and_keeps_the_rest(tmp_path):
    path = tmp_path / "ports.toml"
    path.write_text("# mine\n[ports]\nalpha = 8150  # pinned\nbeta = 8160\n")
    registry = ports.load(path)
    ports.forget(registry, "beta")
    ports.save(registry)
    assert path.read_text() == "# mine\n[ports]\nalpha = 8150  # pinned\n"
