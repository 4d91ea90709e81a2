"""HTTPS, for real: certbot gets a certificate from pebble through nginx, the way a host
gets one from Let's Encrypt.

pebble (Debian's package, Let's Encrypt's test ACME server) validates the HTTP-01
challenge for real: it asks nginx for the token certbot wrote into the webroot. Its
validation port is its `httpPort` setting, and nginx's port-80 server listens there
instead. The vertical's domain resolves to 127.0.0.1 through pebble-challtestsrv (the
same package), a DNS server that answers every A query with 127.0.0.1, passed to pebble
as -dnsserver: no change to the machine's /etc/hosts or resolver, and no
PEBBLE_VA_ALWAYS_VALID shortcut. pebble's own TLS certificate, which certbot must trust,
is a throwaway one openssl makes for 127.0.0.1.

Everything lives under the test's own root, as `vgen install --root` lays it: the
sites, certbot's configuration (--config-dir, --work-dir, --logs-dir through
certs.command(root=...)), the webroot; nginx runs with its own prefix and configuration.
The laid sites are the production ones with only their ports and absolute paths moved
under that root.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import certs, cli
from generator.install import install

from conftest import generate, render_app, running, sample_answers, write_spec
from test_deploy import NGINX, deny_write_execute, free_port, nginx_conf, wait_for
from test_stats import wait_listening

DOMAIN = "sample.example.com"


def make_tls_cert(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, for pebble's own ACME endpoint."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return folder / "cert.pem"


@contextmanager
def pebble(tmp: Path, http_port: int):
    """pebble validating HTTP-01 on http_port, its DNS from pebble-challtestsrv; yields
    (ACME directory URL, the CA bundle certbot needs, pebble's management port)."""
    tmp.mkdir()
    tls = make_tls_cert(tmp)
    dns, acme, management = free_port(), free_port(), free_port()
    config = tmp / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme}", "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(tls), "privateKey": str(tmp / "key.pem"),
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}))
    # Nonces rejected at random and random waits test ACME clients' retries, not ours.
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    with ExitStack() as stack:
        stack.enter_context(running(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
            tmp / "dns.log"))
        stack.enter_context(running(["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
                                    tmp / "pebble.log", env=env))
        directory = f"https://127.0.0.1:{acme}/dir"
        trusted = ssl.create_default_context(cafile=str(tls))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(directory, context=trusted, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pebble does not answer: {(tmp / 'pebble.log').read_text()}")
                time.sleep(0.1)
        yield directory, tls, management


def pebble_root(tls: Path, management: int) -> str:
    """The root pebble issues under (a new one each run), as PEM."""
    trusted = ssl.create_default_context(cafile=str(tls))
    with urllib.request.urlopen(f"https://127.0.0.1:{management}/roots/0", context=trusted, timeout=10) as r:
        return r.read().decode()


def localize(root: Path, logs: Path, app: Path, http_port: int, https_port: int, upstream: int) -> None:
    """The laid sites, with their ports and absolute paths moved to this test's."""
    for site in (root / "etc/nginx/sites-available").glob("*.conf"):
        text = site.read_text()
        text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
        text = re.sub(r"\n *listen \[::\]:\d+( ssl)?;", "", text)
        text = re.sub(r"proxy_pass http://127\.0\.0\.1:\d+;", f"proxy_pass http://127.0.0.1:{upstream};", text)
        text = text.replace(f"/srv/vgen/{app.name}/current/", f"{app}/")
        text = text.replace("/var/log/nginx/", f"{logs}/")
        for folder in ("/etc/nginx/", "/etc/letsencrypt/", "/var/www/"):
            text = text.replace(folder, f"{root}{folder}")
        site.write_text(text)


def http_get(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": DOMAIN})
        response = conn.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        conn.close()


def https_get(port: int, path: str, ca: str):
    """GET over TLS to 127.0.0.1:port, as a browser would ask for DOMAIN: the certificate
    must chain to ca and name DOMAIN. Returns (status, response, peer certificate)."""
    context = ssl.create_default_context(cadata=ca)
    conn = http.client.HTTPSConnection(DOMAIN, port, context=context, timeout=10)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=DOMAIN)
    try:
        peer = conn.sock.getpeercert()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response, peer
    finally:
        conn.close()


@pytest.mark.slow
def test_certbot_gets_a_certificate_from_pebble_and_the_app_answers_over_https(template_repo, wheels, tmp_path):
    app = render_app(template_repo, sample_answers(domain=DOMAIN), tmp_path / "apps" / "sample")
    # The app's README shows the command vgen install prints.
    assert f"# {shlex.join(certs.command('sample', DOMAIN))}\n" in (app / "README.md").read_text()
    root = tmp_path / "root"
    installed = install(["sample"], root, tmp_path / "apps", wheels)
    assert installed.domains == {"sample": DOMAIN}
    assert (root / certs.WEBROOT).is_dir()
    enabled = root / "etc/nginx/sites-enabled"
    assert sorted(p.name for p in enabled.iterdir()) == ["sample.conf"]  # no certificate, no 443 server yet

    http_port, https_port, upstream = free_port(), free_port(), free_port()
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    localize(root, nginx_dir / "logs", app, http_port, https_port, upstream)
    conf = nginx_conf(nginx_dir, enabled / "*.conf")
    nginx = f"{NGINX} -p {nginx_dir} -c {conf} -e {nginx_dir}/logs/error.log"

    data = tmp_path / "data"
    env = dict(os.environ, DATA_DIR=str(data), GUNICORN_BIND=f"127.0.0.1:{upstream}")
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env, check=True,
                   capture_output=True)
    with ExitStack() as stack:
        stack.enter_context(running([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
                                    tmp_path / "gunicorn.log", cwd=app, env=env, preexec_fn=deny_write_execute))
        wait_for(upstream)
        directory, tls, management = stack.enter_context(pebble(tmp_path / "pebble", http_port))
        server = stack.enter_context(running([*nginx.split(), "-g", "daemon off;"], tmp_path / "nginx.log"))
        stack.callback(lambda: server.send_signal(signal.SIGQUIT))
        wait_listening(http_port)

        # Before the certificate: the app over plain HTTP, and nothing on 443.
        status, _, body = http_get(http_port, "/login")
        assert status == 200 and b"<form" in body
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", https_port)) != 0

        # The command `vgen install` prints, kept under the root, against pebble.
        argv = certs.command("sample", DOMAIN, directory, root=root, nginx=nginx)
        argv += ["--non-interactive", "--agree-tos", "--register-unsafely-without-email"]
        done = subprocess.run(argv, env=dict(os.environ, REQUESTS_CA_BUNDLE=str(tls)), capture_output=True,
                              text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        access = (nginx_dir / "logs/sample.access.log").read_text()
        assert re.search(r'"GET /\.well-known/acme-challenge/\S+ HTTP/1\.1" 200 .*Pebble-VA', access), access
        # The deploy hook enabled the 443 server and reloaded nginx.
        assert os.readlink(enabled / "sample-https.conf") == "../sites-available/sample-https.conf"
        wait_listening(https_port)

        ca = pebble_root(tls, management)
        status, response, peer = https_get(https_port, "/login", ca)
        assert status == 200
        assert response.getheader("Strict-Transport-Security") == "max-age=63072000; includeSubDomains"
        cookie = [part.strip() for part in response.getheader("Set-Cookie").split(";")]
        assert cookie[0].startswith("__Host-session=")
        assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= set(cookie)
        assert not any(part.lower().startswith("domain=") for part in cookie)
        expires = certs.expiry(root, DOMAIN)
        assert expires == dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(peer["notAfter"]), dt.UTC)
        assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(days=30)

        # Plain HTTP now redirects, pages and static files alike; the challenge stays
        # on HTTP, for renewals.
        assert http_get(http_port, "/login")[:2] == (301, f"https://{DOMAIN}/login")
        assert http_get(http_port, "/static/style.css?v=1")[:2] == (301, f"https://{DOMAIN}/static/style.css?v=1")
        assert http_get(http_port, "/.well-known/acme-challenge/missing")[0] == 404
        assert http_get(http_port, "/login")[0] == 301
        status, response, _ = https_get(https_port, "/static/style.css", ca)
        assert status == 200 and "Strict-Transport-Security" not in response.headers  # nginx's own file

        # A renewal (what certbot.timer runs, forced) validates again over HTTP and runs
        # the same hook: nginx serves the new certificate.
        renew = ["certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew", "--non-interactive",
                 "--config-dir", str(root / "etc/letsencrypt"),
                 "--work-dir", str(root / "var/lib/letsencrypt"), "--logs-dir", str(root / "var/log/letsencrypt")]
        done = subprocess.run(renew, env=dict(os.environ, REQUESTS_CA_BUNDLE=str(tls)), capture_output=True,
                              text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + 30
        while https_get(https_port, "/healthz", ca)[2]["serialNumber"] == peer["serialNumber"]:
            assert time.monotonic() < deadline, "nginx still serves the old certificate after the renewal"
            time.sleep(0.2)


def make_cert(path: Path, days: int) -> None:
    path.parent.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(path.with_name("privkey.pem")), "-out", str(path),
                    "-days", str(days), "-subj", f"/CN={path.parent.name}"], check=True, capture_output=True)


def test_expiry_reads_the_certificate_certbot_keeps(tmp_path):
    make_cert(certs.cert_file(tmp_path, DOMAIN), days=10)
    expires = certs.expiry(tmp_path, DOMAIN)
    assert expires.tzinfo is not None
    assert abs(expires - (dt.datetime.now(dt.UTC) + dt.timedelta(days=10))) < dt.timedelta(minutes=5)
    assert certs.expiry(tmp_path, "other.example.com") is None
    certs.cert_file(tmp_path, "broken.example.com").parent.mkdir(parents=True)
    certs.cert_file(tmp_path, "broken.example.com").write_text("not a certificate")
    assert certs.expiry(tmp_path, "broken.example.com") is None


def test_certbot_command_for_a_host_and_for_another_acme_server():
    hook = ("ln -sfn ../sites-available/shop-https.conf /etc/nginx/sites-enabled/shop-https.conf && "
            "{ nginx -t -q && nginx -s reload || { rm -f /etc/nginx/sites-enabled/shop-https.conf; false; }; }")
    assert certs.command("shop", "shop.example.com") == [
        "certbot", "certonly", "--webroot", "-w", "/var/www/vgen-acme", "-d", "shop.example.com",
        "--deploy-hook", hook]
    assert certs.command("shop", "shop.example.com", certs.LETS_ENCRYPT) == certs.command("shop", "shop.example.com")
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert certs.command("shop", "shop.example.com", staging)[-2:] == ["--server", staging]


SPEC = '''slug = "{slug}"
name = "{slug}"
{domain}
[[entities]]
name = "item"
fields = [{{ name = "title", type = "string" }}]
'''


@pytest.mark.slow
def test_status_shows_each_certificates_expiry(project, tmp_path):
    write_spec(project, "alpha", SPEC.format(slug="alpha", domain='domain = "alpha.example.com"'))
    write_spec(project, "bravo", SPEC.format(slug="bravo", domain=""))
    generate(project, ["alpha", "bravo"])
    root = tmp_path / "host"
    make_cert(certs.cert_file(root, "alpha.example.com"), days=30)
    expires = certs.expiry(root, "alpha.example.com").strftime("%Y-%m-%dT%H:%M:%SZ")

    def status(*args):
        result = CliRunner().invoke(cli.main, ["--project", str(project.root), "status", "--out", str(project.out),
                                               *args], terminal_width=200)
        assert result.exit_code == 0, result.output
        return result.output.splitlines()

    lines = status("--root", str(root))
    assert "certificate expires" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["alpha"].rstrip().endswith(expires)
    assert rows["bravo"].rstrip().endswith(" -")
    assert "certificate" not in status("--root", str(tmp_path / "empty"))[0]  # none anywhere: no column

    def vgen_install(*args, env=None):
        result = CliRunner().invoke(cli.main, ["--project", str(project.root), "install", "--out", str(project.out),
                                               *args], env=env, terminal_width=400)
        assert result.exit_code == 0, result.output
        return result

    # vgen install prints certbot's command for a domain without a certificate only.
    result = vgen_install("alpha", "bravo", "--root", str(root), "--acme-server", "https://ca.test/dir")
    assert "certbot certonly" not in result.output
    result = vgen_install("alpha", "--root", str(tmp_path / "new"), env={"VGEN_ACME_SERVER": "https://ca.test/dir"})
    assert "certbot certonly --webroot -w /var/www/vgen-acme -d alpha.example.com" in result.output
    assert "--server https://ca.test/dir" in result.output
