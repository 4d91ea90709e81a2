"""Deterministic synthetic verticals: N specs of 3 to 5 entities with refs among them."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

TYPES = ["string", "text", "integer", "decimal", "boolean", "date", "datetime", "email", "url", "choice"]


def spec_text(index: int) -> str:
    rng = random.Random(index)
    slug = f"vert{index:03d}"
    lines = [f'slug = "{slug}"', f'name = "Vertical {index}"', f'tagline = "Synthetic vertical number {index}"', ""]
    names = []
    for e in range(rng.randint(3, 5)):
        name = f"thing{e}"
        fields = ['  { name = "title", type = "string", required = true, max_length = 80 },']
        for f in range(rng.randint(2, 6)):
            ftype = rng.choice(TYPES)
            extra = ""
            if ftype == "choice":
                extra = ', choices = ["low", "mid", "high"]'
            elif ftype == "decimal":
                extra = ", places = 2, min = 0"
            elif ftype == "integer":
                extra = ", min = 0, max = 1000"
            fields.append(f'  {{ name = "f{f}_{ftype}", type = "{ftype}"{extra} }},')
        if names:
            target = rng.choice(names)
            fields.append(f'  {{ name = "{target}", type = "ref", to = "{target}", on_delete = "{rng.choice(["restrict", "cascade", "set_null"])}" }},')
        lines += ["[[entities]]", f'name = "{name}"', "fields = [", *fields, "]", ""]
        names.append(name)
    return "\n".join(lines)


def make_project(repo: Path, dest: Path, count: int) -> Path:
    """A clone of the template repository holding `count` synthetic verticals only."""
    subprocess.run(["git", "clone", "-q", "--local", str(repo), str(dest)], check=True)
    for path in (dest / "verticals").glob("*.toml"):
        path.unlink()
    (dest / "ports.toml").unlink(missing_ok=True)
    for i in range(1, count + 1):
        (dest / "verticals" / f"vert{i:03d}.toml").write_text(spec_text(i))
    return dest


def change_template(root: Path, marker: str) -> None:
    """A template change that reaches every app: one line in the gunicorn config."""
    conf = root / "template" / "gunicorn.conf.py.jinja"
    conf.write_text(conf.read_text() + f"\n# {marker}\n")
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", marker],
                   cwd=root, check=True)


def copy_apps(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True)
