"""scripts/bench regen: regenerating a fleet with vgen versus a loop of `copier update`.

Both sides start from the same generated apps (copies of one another) and the same
template change, in the same run on the same machine:

- full: after a template change, `vgen generate --all` versus, for each app,
  `copier update --trust --defaults --quiet --vcs-ref <HEAD>` one after the other;
- no change: the same two again, with nothing changed since.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import synthetic

REPO = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def vgen(root: Path, out: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "generator.cli", "--project", str(root), "generate", "--all",
                             "--out", str(out), *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"vgen generate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def copier_loop(apps: list[Path], commit: str) -> None:
    for app in apps:
        subprocess.run(["git", "add", "-A"], cwd=app, check=True)
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "before update", "--allow-empty"],
                       cwd=app, check=True, capture_output=True)
        result = subprocess.run([sys.executable, "-m", "copier", "update", "--trust", "--defaults", "--quiet",
                                 "--vcs-ref", commit], cwd=app, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"copier update failed in {app}:\n{result.stderr[-2000:]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench regen")
    parser.add_argument("--count", type=int, default=220, help="synthetic verticals (default 220)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--sample", type=int, default=0,
                        help="time copier update on this many of the apps (spread evenly) and scale "
                             "to all of them (default: every app, which takes about 25 minutes for 220)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vgen-bench-regen-") as tmp:
        tmp = Path(tmp)
        root = synthetic.make_project(REPO, tmp / "vgen", args.count)
        out = tmp / "apps"
        print(f"{args.count} synthetic verticals, {args.jobs} jobs, in {tmp}")
        created = timed(lambda: vgen(root, out, "--jobs", str(args.jobs)))
        print(f"  initial generation (vgen):             {created:8.1f} s")
        baseline = tmp / "apps-copier"
        synthetic.copy_apps(out, baseline)
        copier_apps = sorted(p for p in baseline.iterdir() if (p / ".copier-answers.yml").exists())
        scale = 1.0
        if args.sample and args.sample < len(copier_apps):
            step = len(copier_apps) / args.sample
            sampled = [copier_apps[int(i * step)] for i in range(args.sample)]
            scale = len(copier_apps) / len(sampled)
            copier_apps = sampled
            print(f"  copier update timed on {len(sampled)} of the apps, scaled by {scale:.1f}")

        synthetic.change_template(root, "bench: a template change")
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        full_vgen = timed(lambda: vgen(root, out, "--jobs", str(args.jobs)))
        full_copier = timed(lambda: copier_loop(copier_apps, commit)) * scale
        same_vgen = timed(lambda: vgen(root, out, "--jobs", str(args.jobs)))
        same_copier = timed(lambda: copier_loop(copier_apps, commit)) * scale

        rows = [
            ("full regeneration after a template change", full_vgen, full_copier),
            ("no-change regeneration", same_vgen, same_copier),
        ]
        print(f"  {'':44} {'vgen':>9} {'copier loop':>12} {'ratio':>8}")
        for label, ours, theirs in rows:
            print(f"  {label:44} {ours:8.2f}s {theirs:11.2f}s {theirs / ours:7.1f}x")


if __name__ == "__main__":
    main()
