"""`vgen status --check`: what in the fleet needs attention, as data, one alarm a line.

For each vertical there is something to watch over (status.deployed: generated here or
installed under the root), an alarm when:

- its last verified backup is older than 26 hours, or there is none (a nightly backup
  that stopped running, or keeps failing);
- its last backup run failed (the run's own error, from backups/last.json);
- off-site copies are configured (BACKUP_OFFSITE in /etc/vgen/<slug>.env, or a run that
  made one) and the last good one is older than 26 hours, or there is none;
- its service is failed under systemd;
- the certificate certbot keeps for its domain (/etc/letsencrypt/live/<domain>/cert.pem)
  expires within 14 days. No certificate there, no alarm: HTTPS may not be set up.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from . import answers, certs, status
from .project import Project

STALE_AFTER = dt.timedelta(hours=26)
CERTIFICATE_WARNING = dt.timedelta(days=14)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # how last.json writes times (UTC)


@dataclass(frozen=True)
class Alarm:
    slug: str
    message: str

    def __str__(self) -> str:
        return f"{self.slug}: {self.message}"


def check(project: Project | None, root: Path = Path("/"), now: dt.datetime | None = None,
          services: dict[str, str] | None = None, letsencrypt: Path | None = None) -> tuple[list[str], list[Alarm]]:
    """(the verticals checked, the alarms), in slug order.

    services: each vertical's state under systemd (status.service_states, read from this
    host's systemd when None). letsencrypt: certbot's folder (default root/etc/letsencrypt).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    apps = status.deployed(project, root)
    if services is None:
        services = status.service_states(list(apps), root)
    letsencrypt = Path(letsencrypt) if letsencrypt is not None else Path(root) / "etc/letsencrypt"
    alarms: list[Alarm] = []
    for slug, app in apps.items():
        alarms += [Alarm(slug, message) for message in vertical_alarms(
            slug, app, root, now, services.get(slug, ""), letsencrypt)]
    return list(apps), alarms


def vertical_alarms(slug: str, app: Path, root: Path, now: dt.datetime, service: str,
                    letsencrypt: Path) -> list[str]:
    found = []
    taken, kind = status.last_backup(app, slug, root)
    if not taken:
        found.append("no verified backup yet")
    elif now - parse_time(taken) > STALE_AFTER:
        found.append(f"last verified backup is {age(now - parse_time(taken))} old ({taken}, {kind})")
    record = status.last_record(app, slug, root)
    offsite = record.get("offsite") or {}
    if record.get("error"):
        what = "off-site copy failed" if offsite and not offsite.get("ok") else "backup run failed"
        found.append(f"{what} ({record.get('time', '?')}): {record['error']}")
    configured = bool(status.settings(slug, root).get("BACKUP_OFFSITE") or offsite or record.get("last_offsite"))
    if configured and not (offsite and not offsite.get("ok")):
        good = record.get("last_offsite") or {}
        if not good.get("time"):
            found.append("no off-site copy yet (BACKUP_OFFSITE is set)")
        elif now - parse_time(good["time"]) > STALE_AFTER:
            found.append(f"last off-site copy is {age(now - parse_time(good['time']))} old ({good['time']}, {good.get('remote')})")
    if service == "failed":
        found.append(f"service failed (systemctl status {slug}.service {slug}.socket)")
    domain = answers.recorded(app).get("domain")
    if domain:
        found += certificate_alarms(letsencrypt / "live" / domain / "cert.pem", domain, now)
    return found


def certificate_alarms(path: Path, domain: str, now: dt.datetime) -> list[str]:
    if not path.is_file():
        return []
    try:
        expires = certs.read_expiry(path)
    except (OSError, ValueError) as e:
        return [f"cannot read the certificate {path}: {e}"]
    if expires <= now:
        return [f"certificate for {domain} expired on {expires:%Y-%m-%d %H:%M} UTC ({path})"]
    if expires - now < CERTIFICATE_WARNING:
        return [f"certificate for {domain} expires in {age(expires - now)}, on {expires:%Y-%m-%d %H:%M} UTC ({path})"]
    return []


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.timezone.utc)


def age(delta: dt.timedelta) -> str:
    """A duration as people say it: 27 hours, 3 days."""
    hours = delta.total_seconds() / 3600
    if hours < 48:
        return f"{max(hours, 0):.0f} hours"
    return f"{hours / 24:.0f} days"
