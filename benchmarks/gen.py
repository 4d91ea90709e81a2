"""scripts/bench gen: `vgen new` versus a plain `copier copy` of the same template.

Both run as the founder runs them, one command in a fresh process each, on a clone of
the template repository, in the same run, alternately, several times (median):

- `vgen new SLUG --out DIR`: writes the starter spec, assigns a port, renders the app;
- `copier copy --trust --defaults --quiet --vcs-ref <HEAD> --data-file ANSWERS REPO DEST`
  with ANSWERS the very answers vgen recorded for that app (same template commit, same
  answers), into a fresh directory.

One round of each first, not counted (the first run of each fills caches). The two
outputs are compared file by file.
"""

from __future__ import annotations

import argparse
import filecmp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import harness


def differing(a: Path, b: Path) -> list[str]:
    """Files that differ or exist on one side only (the answers file aside)."""
    out = []
    cmp = filecmp.dircmp(a, b, ignore=[".copier-answers.yml", ".git", "__pycache__"])
    todo = [(cmp, "")]
    while todo:
        c, prefix = todo.pop()
        out += [prefix + n for n in c.left_only + c.right_only + c.diff_files + c.funny_files]
        todo += [(sub, f"{prefix}{name}/") for name, sub in c.subdirs.items()]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench gen")
    parser.add_argument("--repeat", type=int, default=7, help="counted rounds (default 7)")
    args = parser.parse_args(argv)

    harness.header(f"scripts/bench gen: vgen new vs copier copy, median of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="vgen-bench-gen-") as tmp:
        tmp = Path(tmp)
        root = harness.clone_project(harness.source_repo(), tmp / "vgen")
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        ours, theirs, diffs = [], [], []
        for i in range(args.repeat + 1):
            slug = f"benchgen{i}"
            start = time.perf_counter()
            harness.vgen(root, "new", slug, "--out", str(tmp / "apps"))
            vgen_s = time.perf_counter() - start

            answers = yaml.safe_load((tmp / "apps" / slug / ".copier-answers.yml").read_text())
            data = tmp / f"{slug}.answers.yml"
            data.write_text(yaml.safe_dump({k: v for k, v in answers.items() if not k.startswith("_")}))
            dest = tmp / "copier" / slug
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--quiet",
                                     "--vcs-ref", commit, "--data-file", str(data), str(root), str(dest)],
                                    capture_output=True, text=True)
            copier_s = time.perf_counter() - start
            if result.returncode != 0:
                raise SystemExit(f"copier copy failed:\n{result.stderr[-3000:]}")
            diffs.append(differing(tmp / "apps" / slug, dest))
            if i:  # round 0 warms the caches
                ours.append(vgen_s)
                theirs.append(copier_s)

    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"  {'':28} {'median':>8} {'min':>8} {'max':>8}")
    print(f"  {'copier copy (baseline)':28} {med_theirs:7.2f}s {min(theirs):7.2f}s {max(theirs):7.2f}s")
    print(f"  {'vgen new':28} {med_ours:7.2f}s {min(ours):7.2f}s {max(ours):7.2f}s")
    print(f"  vgen new / copier copy: {med_ours / med_theirs:.2f}x")
    same = not any(diffs)
    print(f"  outputs identical (answers file aside): {'yes' if same else 'NO: ' + ', '.join(diffs[-1][:10])}")
    print(f"  goal (vgen new within 1.5x of copier copy): {'met' if med_ours <= 1.5 * med_theirs else 'NOT met'}")


if __name__ == "__main__":
    main()
