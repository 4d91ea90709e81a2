"""The wheels a host needs to build an app's virtual environment without a package index.

A host (a small box, or a test container) often reaches no package index at all, so
`vgen install` ships the app's dependencies as wheels: pip on the founder's machine
downloads them for the host's Python (its version and machine from the root's
/usr/lib/python3.X, or this machine's), and the host runs
`pip install --no-index --find-links WHEELHOUSE -r requirements.txt`.

Every generated app has the same dependencies, so one wheelhouse serves a whole fleet.
It is cached under ~/.cache/vgen/wheelhouse (or $VGEN_CACHE/wheelhouse), keyed by what
was asked for, and built into a temporary folder that is renamed into place when
complete: a half-downloaded wheelhouse is never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import VgenError

# The glibc versions a manylinux wheel may target on the hosts vgen deploys to (Debian 12
# has glibc 2.36); pip picks the newest wheel among them.
MANYLINUX_GLIBC = range(17, 37)
LOCK = "requirements.txt"


@dataclass(frozen=True)
class Wheelhouse:
    folder: Path  # the .whl files and requirements.txt
    python: str  # "3.11": the host Python the wheels are for

    @property
    def requirements(self) -> str:
        """The pinned requirements (name==version, one per wheel): what a venv gets."""
        return (self.folder / LOCK).read_text(encoding="utf-8")

    def wheels(self) -> list[Path]:
        return sorted(self.folder.glob("*.whl"))


def host_python(root: Path) -> tuple[str, str]:
    """(Python version, machine) of the host whose root file system is at root.

    Debian keeps its Python's standard library in /usr/lib/python3.X; the machine comes
    from the multiarch folder (/usr/lib/x86_64-linux-gnu). A root without them (a
    scratch folder) is taken to be like this machine.
    """
    versions = []
    for lib in Path(root, "usr/lib").glob("python3.*"):
        match = re.fullmatch(r"python3\.(\d+)", lib.name)
        if match and (lib / "os.py").is_file():
            versions.append(int(match.group(1)))
    python = f"3.{max(versions)}" if versions else f"{sys.version_info[0]}.{sys.version_info[1]}"
    machine = platform.machine()
    for candidate in ("x86_64", "aarch64"):
        if Path(root, f"usr/lib/{candidate}-linux-gnu").is_dir():
            machine = candidate
            break
    return python, machine


def cache_folder() -> Path:
    base = os.environ.get("VGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vgen"
    )
    return Path(base) / "wheelhouse"


def build(requirements: list[str], python: str, machine: str, cache: Path | None = None) -> Wheelhouse:
    """The wheelhouse for requirements on a host with this Python and machine: from the
    cache when it holds one, else downloaded with pip (which needs the package index
    once)."""
    cache = Path(cache) if cache is not None else cache_folder()
    key = hashlib.sha256(json.dumps([sorted(requirements), python, machine]).encode()).hexdigest()[:16]
    folder = cache / f"py{python}-{machine}-{key}"
    if (folder / LOCK).is_file():
        return Wheelhouse(folder, python)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another vgen (or test worker) may be building it
        if not (folder / LOCK).is_file():
            _download(requirements, python, machine, folder)
    return Wheelhouse(folder, python)


def _download(requirements: list[str], python: str, machine: str, folder: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        abi = "cp" + python.replace(".", "")
        platforms = [f"manylinux_2_{v}_{machine}" for v in MANYLINUX_GLIBC]
        platforms += [f"manylinux2014_{machine}"]
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--dest", str(tmp),
            "--python-version", python, "--implementation", "cp", "--abi", abi,
        ]
        for tag in platforms:
            command += ["--platform", tag]
        done = subprocess.run(command + requirements, capture_output=True, text=True)
        if done.returncode != 0:
            said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise VgenError(
                f"could not gather the app's wheels for Python {python} on {machine} "
                f"({' '.join(requirements)}): pip download said:\n{said}"
            )
        pins = []
        for wheel in sorted(tmp.glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            pins.append(f"{name}=={version}\n")
        (tmp / LOCK).write_text("".join(pins), encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
