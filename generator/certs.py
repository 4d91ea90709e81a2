"""HTTPS for a vertical's domain: the certbot command that gets its certificate, and
when that certificate expires.

Two steps, so nginx keeps vgen's own configuration (certbot's webroot plugin, not its
nginx plugin, which would rewrite the site):

1. `vgen install` enables SLUG.conf: port 80 serves the app and answers the ACME HTTP-01
   challenge from WEBROOT. It also lays SLUG-https.conf (the 443 server) without enabling
   it, since nginx refuses a site whose certificate does not exist yet.
2. `certbot certonly --webroot` (command() below, run once as root on the host) gets the
   certificate; its deploy hook links SLUG-https.conf into sites-enabled and reloads
   nginx, and SLUG.conf then redirects plain HTTP to HTTPS. certbot stores the hook with
   the certificate, so each renewal by Debian's certbot.timer reloads nginx too.

Let's Encrypt by default; another ACME directory (a test server, a CA of one's own)
through `vgen install --acme-server URL` or VGEN_ACME_SERVER, passed to certbot's --server.
"""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

from cryptography import x509

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
WEBROOT = Path("var/www/vgen-acme")  # under the root, as the sites' challenge location says
LIVE = Path("etc/letsencrypt/live")  # certbot's lineages: LIVE/DOMAIN/{cert,fullchain,privkey}.pem


def cert_file(root: Path, domain: str) -> Path:
    return Path(root) / LIVE / domain / "cert.pem"


def expiry(root: Path, domain: str) -> dt.datetime | None:
    """When the certificate certbot keeps for domain (under root) expires, in UTC; None
    when there is none or it cannot be read."""
    try:
        return read_expiry(cert_file(root, domain))
    except (OSError, ValueError):
        return None


def read_expiry(path: Path) -> dt.datetime:
    """When the PEM certificate at path expires, in UTC. Raises OSError when the file
    cannot be read, ValueError when it holds no certificate."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc


def command(slug: str, domain: str, server: str = "", root: Path = Path("/"), nginx: str = "nginx") -> list[str]:
    """certbot's command line that gets domain's certificate and turns HTTPS on for slug.

    root other than / keeps everything under it (certbot's configuration, work and log
    folders, the webroot, nginx's sites), as `vgen install --root` lays files there;
    nginx is the command that tests and reloads nginx (`nginx` on a host: its -s reload
    is what systemd's nginx.service does on reload).
    """
    root = Path(root)
    enabled = root / "etc/nginx/sites-enabled" / f"{slug}-https.conf"
    link = f"ln -sfn ../sites-available/{slug}-https.conf {shlex.quote(str(enabled))}"
    # A site nginx refuses is taken out again: nginx keeps serving, over HTTP.
    hook = f"{link} && {{ {nginx} -t -q && {nginx} -s reload || {{ rm -f {shlex.quote(str(enabled))}; false; }}; }}"
    argv = ["certbot", "certonly", "--webroot", "-w", str(root / WEBROOT), "-d", domain, "--deploy-hook", hook]
    if server and server != LETS_ENCRYPT:
        argv += ["--server", server]
    if root != Path("/"):
        argv += ["--config-dir", str(root / "etc/letsencrypt"), "--work-dir", str(root / "var/lib/letsencrypt"),
                 "--logs-dir", str(root / "var/log/letsencrypt")]
    return argv
