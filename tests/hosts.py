"""Booted Debian 12 containers with real systemd, for the tests and benchmarks.

The test machines do not run systemd as PID 1, so `systemctl` on them does nothing. A
container booted with systemd-nspawn does: units, sockets, DynamicUser, journald, timers,
on its own address on a bridge. ../shared/SYSTEMD-HOSTS.md has what was found to hold:

- the root file system is built once with debootstrap and cached outside the checkout
  (/var/cache/vgen-tests/, keyed by the package list), so CI on a fresh clone of the same
  machine reuses it; each host is a `cp -a` copy of it, with its own machine id, SSH host
  keys, host name and address;
- nspawn must not ask for a systemd on the machine (--register=no --keep-unit), and each
  container gets cgroup folders of its own, or stopping a unit in one stops it in another;
- the hosts sit on a bridge made for the run (a free 10.231.X.0/24), reach nothing else,
  and everything made is removed at the end: containers, cgroup folders, the bridge.

    with Fleet(tmp_path, count=2) as fleet:
        host = fleet.hosts[0]
        host.run(["systemctl", "is-system-running"])
        host.root            # its root file system, on this machine
        host.address         # where this machine reaches it (HTTP, SSH)

A missing precondition raises Unavailable naming what is missing; tests turn it into a
failure, never a silent skip (VGEN_NO_SYSTEMD_TESTS=1 opts out explicitly).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("VGEN_TEST_CACHE", "/var/cache/vgen-tests"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What a host needs: systemd and the tools the verticals run on (python3 with venv,
# sqlite3, nginx, cron), sshd for the multi-host tests, procps for pgrep and ps.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "sqlite3",
            "cron", "nginx", "procps", "iproute2")
OPT_OUT = "VGEN_NO_SYSTEMD_TESTS"
CGROUP_HIERARCHIES = ("unified", "systemd")
BOOT_SECONDS = 60


class Unavailable(Exception):
    """A precondition of booted containers is missing; the message names it."""


def check_preconditions() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containers need it)")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                          ("ip", "iproute2"), ("nsenter", "util-linux"), ("ssh-keygen", "openssh-client")):
        if not shutil.which(tool):
            missing.append(f"{tool} (apt-get install {package})")
    for hierarchy in CGROUP_HIERARCHIES:
        folder = Path("/sys/fs/cgroup") / hierarchy
        if not os.access(folder, os.W_OK):
            missing.append(f"a writable {folder} (cgroup folders of the containers)")
    if missing:
        raise Unavailable(f"booted systemd containers need: {'; '.join(missing)} "
                          f"(or set {OPT_OUT}=1 to leave these tests out)")


def root_filesystem() -> Path:
    """The cached Debian root file system (built on first use, about 80 s)."""
    check_preconditions()
    key = hashlib.sha256(" ".join([SUITE, MIRROR, *PACKAGES]).encode()).hexdigest()[:12]
    target = CACHE / f"{SUITE}-{key}"
    if (target / "etc/os-release").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it
        if not (target / "etc/os-release").is_file():
            _build(target)
    return target


def _build(target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(tmp, 0o755)  # the container's / : its services' users must enter it
    try:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise Unavailable(f"debootstrap failed ({MIRROR}):\n{(done.stdout + done.stderr)[-3000:]}")
        # The address comes from systemd-networkd (a file per host, see Host._configure).
        subprocess.run(["chroot", str(tmp), "systemctl", "enable", "systemd-networkd"],
                       check=True, capture_output=True)
        # Fast boots: nothing waits for a network that is not there.
        subprocess.run(["chroot", str(tmp), "systemctl", "mask", "systemd-networkd-wait-online.service"],
                       check=True, capture_output=True)
        shutil.rmtree(tmp / "var/cache/apt/archives", ignore_errors=True)
        (tmp / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Bridge:
    """A bridge of the run's own, on a /24 of 10.231.0.0/16 that nothing else uses."""

    def __init__(self):
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
        for third in range(1, 255):
            net = ipaddress.ip_network(f"10.231.{third}.0/24")
            if f"10.231.{third}." not in used:
                break
        else:
            raise Unavailable("no free 10.231.X.0/24 for the test bridge")
        self.network = net
        self.name = f"vgenbr{os.getpid() % 100000}"
        self.gateway = str(net.network_address + 1)
        for command in (["ip", "link", "add", self.name, "type", "bridge"],
                        ["ip", "addr", "add", f"{self.gateway}/24", "dev", self.name],
                        ["ip", "link", "set", self.name, "up"]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                self.remove()
                raise Unavailable(f"cannot make the test bridge ({' '.join(command)}): {done.stderr.strip()}")

    def address(self, index: int) -> str:
        return str(self.network.network_address + 11 + index)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)


class Host:
    """One booted container: run commands in it, read its journal, reboot it."""

    def __init__(self, name: str, root: Path, address: str, bridge: Bridge, key: Path, log: Path):
        self.name, self.root, self.address, self.bridge, self.key, self.log = name, root, address, bridge, key, log
        self.nspawn: subprocess.Popen | None = None
        self.leader = 0

    def _configure(self) -> None:
        (self.root / "etc/machine-id").write_text(
            subprocess.run(["systemd-id128", "new"], capture_output=True, text=True, check=True).stdout)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        for old in (self.root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        subprocess.run(["chroot", str(self.root), "ssh-keygen", "-A"], check=True, capture_output=True)
        ssh = self.root / "root/.ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        (self.root / "etc/systemd/network/10-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={self.address}/24\nGateway={self.bridge.gateway}\n")

    def boot(self) -> None:
        cgroups = [Path("/sys/fs/cgroup") / h / f"vgen-{self.name}" for h in CGROUP_HIERARCHIES]

        def own_cgroup():  # in the child, before exec: a cgroup of its own (SYSTEMD-HOSTS.md)
            os.setsid()
            for folder in cgroups:
                folder.mkdir(exist_ok=True)
                (folder / "cgroup.procs").write_text(str(os.getpid()))

        log = open(self.log, "a")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(self.root), f"--machine={self.name}", "-b",
             "--register=no", "--keep-unit", f"--network-bridge={self.bridge.name}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=own_cgroup,
        )
        log.close()
        deadline = time.monotonic() + BOOT_SECONDS
        while not self.leader:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"container {self.name} did not start:\n{self._log_tail()}")
            # nspawn's child becomes the container's init, systemd, once set up.
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            try:
                child = int(children.read_text().split()[0])
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    self.leader = child
                    continue
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.05)
        while True:
            try:
                done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "is-system-running",
                                       "--wait"], capture_output=True, text=True, timeout=BOOT_SECONDS)
                state = done.stdout.strip()
            except subprocess.TimeoutExpired:
                state = "still starting"
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"container {self.name} is {state!r} after {BOOT_SECONDS}s:\n{self._log_tail()}")
            time.sleep(0.2)
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            raise Unavailable(f"container {self.name} booted degraded; failed units:\n{failed}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    def run(self, command, check: bool = True, timeout: float = 120, input: str | None = None):
        """Run a command inside (a list, or a string for /bin/sh -c); text output."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"in {self.name}: {argv} exited {done.returncode}\n"
                                 f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}")
        return done

    def copy_in(self, source: Path, dest: str) -> None:
        """Copy a file or folder of this machine to dest inside (its root is ours too)."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(source).is_dir():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)

    def journal(self, unit: str, lines: int = 100) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit], check=False).stdout

    def ssh(self, *command: str) -> list[str]:
        """The ssh command line that reaches this host as root with the test key."""
        return ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{self.address}", *command]

    def poweroff(self, timeout: float = 60) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            self._remove_cgroups()
            return
        subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "poweroff"], capture_output=True)
        try:
            self.nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        self.leader = 0
        self._remove_cgroups()

    def reboot(self) -> None:
        """A real reboot: the container powers off, then boots again from the same root."""
        self.poweroff()
        self.boot()

    def _remove_cgroups(self) -> None:
        for hierarchy in CGROUP_HIERARCHIES:
            top = Path("/sys/fs/cgroup") / hierarchy / f"vgen-{self.name}"
            if not top.exists():
                continue
            for folder, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(folder)
                except OSError:
                    pass


class Fleet:
    """count hosts booted from copies of the cached root file system, on a bridge of
    their own; all of it removed on exit, whatever happened."""

    def __init__(self, tmp: Path, count: int = 1):
        self.tmp, self.count = Path(tmp), count
        self.hosts: list[Host] = []
        self.bridge: Bridge | None = None

    def __enter__(self) -> Fleet:
        cached = root_filesystem()
        try:
            self.bridge = Bridge()
            key = self.tmp / "id_ed25519"
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            for index in range(self.count):
                name = f"vgen{os.getpid() % 100000}h{index + 1}"
                root = self.tmp / name
                subprocess.run(["cp", "-a", str(cached), str(root)], check=True)
                host = Host(name, root, self.bridge.address(index), self.bridge, key, self.tmp / f"{name}.log")
                host._configure()
                self.hosts.append(host)
                host.boot()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for host in self.hosts:
            host.poweroff()
        if self.bridge is not None:
            self.bridge.remove()
        for host in self.hosts:
            shutil.rmtree(host.root, ignore_errors=True)


def boot_hosts(count: int, tmp: Path) -> Fleet:
    """`with boot_hosts(2, tmp) as fleet:` ... `fleet.hosts`."""
    return Fleet(tmp, count)
