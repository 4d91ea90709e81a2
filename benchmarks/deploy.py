"""`scripts/bench deploy [N]`: `vgen deploy --all` of N synthetic verticals (30 by default)
across three booted containers (tests/hosts.py), over SSH with Ansible:

- the first rollout, every host at once (`--batch 3`), then the same deploy again with
  nothing changed;
- the baseline, in the same run: the same playbook run one vertical at a time (`vgen
  deploy SLUG` for each, the naive loop), on three other, fresh containers.

The verticals are placed round-robin on web1, web2, web3 in hosts.toml; the loop's
hosts.toml names the same three hosts at the other containers' addresses. Every
vertical's /healthz is asked through its host's nginx after each rollout.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import harness, synthetic

sys.path.insert(0, str(harness.REPO / "tests"))
import hosts  # noqa: E402  (the tests' container harness)

NAMES = ("web1", "web2", "web3")


def write_hosts(root: Path, addresses: list[str], key: Path, placement: dict[str, str]) -> None:
    lines = ['[defaults]\nhost = "web1"\n']
    for name, address in zip(NAMES, addresses):
        lines.append(f'[hosts.{name}]\naddress = "{address}"\n'
                     f'vars = {{ ansible_ssh_private_key_file = "{key}", '
                     f'ansible_ssh_common_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" }}\n')
    lines.append("[placement]\n" + "".join(f'{slug} = "{host}"\n' for slug, host in placement.items()))
    (root / "hosts.toml").write_text("\n".join(lines))


def timed_deploy(root: Path, out: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = harness.vgen(root, "deploy", *args, "--out", str(out))
    return time.perf_counter() - start, done.stdout


def all_healthy(fleet_hosts: list, placement: dict[str, str]) -> int:
    """How many verticals answer /healthz 200 through their host's nginx."""
    by_name = dict(zip(NAMES, fleet_hosts))
    ok = 0
    for slug, name in placement.items():
        request = urllib.request.Request(f"http://{by_name[name].address}/healthz",
                                         headers={"Host": f"{slug}.localhost"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                ok += response.status == 200
        except OSError:
            pass
    return ok


def changed_in_recap(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", output, re.M)]


def deploy(args) -> None:
    harness.header(f"scripts/bench deploy: {args.count} verticals across 3 hosts")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-") as tmp:
        tmp = Path(tmp)
        with hosts.boot_hosts(6, tmp) as fleet:
            parallel_hosts, loop_hosts = fleet.hosts[:3], fleet.hosts[3:]
            key = fleet.hosts[0].key
            root = synthetic.make_project(harness.source_repo(), tmp / "vgen", args.count)
            out = tmp / "apps"
            start = time.perf_counter()
            harness.vgen(root, "generate", "--all", "--out", str(out), "--jobs", "2")
            generate_s = time.perf_counter() - start
            slugs = sorted(p.stem for p in (root / "verticals").glob("*.toml"))
            placement = {slug: NAMES[i % 3] for i, slug in enumerate(slugs)}

            write_hosts(root, [h.address for h in parallel_hosts], key, placement)
            first_s, first_out = timed_deploy(root, out, "--all", "--batch", "3")
            first_ok = all_healthy(parallel_hosts, placement)
            again_s, again_out = timed_deploy(root, out, "--all", "--batch", "3")
            again_changed = changed_in_recap(again_out)

            write_hosts(root, [h.address for h in loop_hosts], key, placement)
            start = time.perf_counter()
            for slug in slugs:
                harness.vgen(root, "deploy", slug, "--out", str(out))
            loop_s = time.perf_counter() - start
            loop_ok = all_healthy(loop_hosts, placement)

    n = len(slugs)
    print(f"  vgen generate --all ({n} verticals, not timed below): {generate_s:.1f}s")
    print(f"  vgen deploy --all --batch 3, first run: {first_s:.1f}s "
          f"({first_ok}/{n} /healthz 200 through nginx)")
    print(f"  vgen deploy --all --batch 3, nothing changed: {again_s:.1f}s "
          f"(changed= in the recap: {again_changed})")
    print(f"  baseline, the same playbook one vertical at a time (vgen deploy SLUG x {n}): {loop_s:.1f}s "
          f"({loop_ok}/{n} /healthz 200 through nginx)")
    no_change = first_s / again_s
    parallel = loop_s / first_s
    print(f"  no-change run: {no_change:.1f}x faster than the first; goal (5x): "
          f"{'met' if no_change >= 5 else 'NOT met'}")
    print(f"  parallel rollout: {parallel:.1f}x faster than the loop; goal (3x): "
          f"{'met' if parallel >= 3 else 'NOT met'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench deploy")
    parser.add_argument("count", type=int, nargs="?", default=30)
    deploy(parser.parse_args(argv))


if __name__ == "__main__":
    main()
