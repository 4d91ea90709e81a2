"""A full disk under DATA_DIR: the customer's entry is kept on screen, /healthz says so,
the database stays sound, and the app recovers by itself once there is space again.

DATA_DIR is a small tmpfs the test mounts (as root, as CI runs): a missing precondition
fails with its name. VGEN_NO_MOUNT_TESTS=1 leaves these tests out explicitly.
"""

from __future__ import annotations

import html
import http.cookiejar
import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import mailed_link, render_app, sample_answers
from test_deploy import free_port, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VGEN_NO_MOUNT_TESTS") == "1",
                       reason="VGEN_NO_MOUNT_TESTS=1: the tests that mount a tmpfs are left out"),
]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs and needs root (or VGEN_NO_MOUNT_TESTS=1): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Browser:
    """Cookies and CSRF tokens over plain HTTP, as a browser would send them."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def open(self, path: str, data: dict | None = None) -> tuple[int, str, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base + path, data=body)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.geturl(), exc.read().decode()

    def post_form(self, path: str, page: str, fields: dict) -> tuple[int, str, str]:
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"', page)
        return self.open(path, {"csrf_token": token.group(1) or token.group(2), **fields})


def fill(disk) -> None:
    """Fill the disk to the last byte."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_keeps_the_entry_and_says_so(template_repo, tmp_path, small_disk):
    app = render_app(template_repo, sample_answers(), tmp_path / "sample")
    port = free_port()
    data = small_disk / "data"
    env = dict(os.environ, DATA_DIR=str(data), GUNICORN_BIND=f"127.0.0.1:{port}", MIN_FREE_MB="1")
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "migrate"], cwd=app, env=env,
                   check=True, capture_output=True)
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"], cwd=app,
                              env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        wait_for(port)
        browser = Browser(f"http://127.0.0.1:{port}")
        _, _, page = browser.open("/signup")
        status, _, _ = browser.post_form("/signup", page, {
            "account": "Acme", "email": "owner@example.com",
            "password": "a long enough password", "confirm": "a long enough password"})
        assert status == 200
        link = mailed_link(data, "owner@example.com")
        _, _, page = browser.open(link)
        status, url, _ = browser.post_form(link, page, {})
        assert status == 200 and url.endswith("/"), url
        _, _, form = browser.open("/batches/new")
        entry = {"code": "B-001", "made_on": "2024-05-01", "notes": "Washed rind, turned daily. " * 4000}

        fill(small_disk)
        status, _, page = browser.open("/healthz")
        assert status == 503
        assert json.loads(page)["problem"].startswith("disk full")
        status, _, page = browser.post_form("/batches/new", form, entry)
        assert status == 503, page[:2000]
        assert "We could not save this" in page
        assert 'value="B-001"' in page and html.escape(entry["notes"][:100], quote=False) in page
        assert "batch not saved: the database could not be written" in log.read_text()
        db = sqlite3.connect(f"file:{data / 'sample.db'}?mode=ro", uri=True)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute('SELECT count(*) FROM "batch"').fetchone()[0] == 0
        db.close()

        (small_disk / "filler").unlink()  # space again: the same submit goes through
        status, _, _ = browser.open("/healthz")
        assert status == 200
        status, url, _ = browser.post_form("/batches/new", page, entry)
        assert status == 200 and re.search(r"/batches/\d+$", url), url
        db = sqlite3.connect(f"file:{data / 'sample.db'}?mode=ro", uri=True)
        assert db.execute('SELECT "notes" FROM "batch"').fetchone()[0] == entry["notes"]
        db.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
