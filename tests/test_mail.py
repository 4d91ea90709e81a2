"""A generated app's mail through a real SMTP server (aiosmtpd, started here), served by
gunicorn: the sign-up and reset links arrive, work once, and known and unknown addresses
get the same answer, in about the same time."""

from __future__ import annotations

import email
import email.policy
import re
import socket
import sqlite3
import statistics
import time
import urllib.parse

import pytest
from aiosmtpd.controller import Controller

from conftest import gunicorn, render_app, sample_answers, wait_for
from test_disk_full import Browser

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd's handler: every message it is handed, parsed."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def last(self, to: str, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if m["To"] == to]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no mail to {to} arrived")

    def link(self, to: str, base: str) -> str:
        """The path of the link in the newest mail to `to`, which must start with `base`."""
        url = re.search(r"https?://\S+", self.last(to).get_content()).group()
        assert url.startswith(base + "/"), url
        return urllib.parse.urlsplit(url).path


@pytest.fixture
def served(template_repo, tmp_path, monkeypatch):
    """The sample app under gunicorn, sending mail through a local SMTP server:
    (its base URL, the inbox, its DATA_DIR)."""
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    app_dir = render_app(template_repo, sample_answers(), tmp_path / "sample")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    for name, value in {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "BASE_URL": base,
                        "MAIL_FROM": "Sample <noreply@sample.example.com>",
                        "GUNICORN_BIND": f"127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "data"
    try:
        with gunicorn(app_dir, data_dir):
            assert wait_for(f"{base}/healthz")[0] == 200
            yield base, inbox, data_dir
    finally:
        smtp.stop()
    assert not (data_dir / "outbox").exists()  # every mail went by SMTP


def forget_mail_limits(data_dir):
    """As if an hour had passed: the limits on mails and sign-ups start again."""
    db = sqlite3.connect(data_dir / "sample.db")
    with db:
        db.execute('DELETE FROM "app_mail_request"')
        db.execute('DELETE FROM "app_signup"')
    db.close()


def same_page(page: str) -> str:
    page = re.sub(r'"X-CSRFToken": "[^"]+"', "", page)
    return re.sub(r"[\w.+-]+@example\.com", "ADDRESS", page)


def sign_up(browser: Browser, address: str):
    _, _, page = browser.open("/signup")
    return browser.post_form("/signup", page, {"account": "Acme", "email": address, "password": PASSWORD, "confirm": PASSWORD})


def press(browser: Browser, link: str, fields=None):
    """Open a mailed link and press its page's button."""
    status, _, page = browser.open(link)
    if status != 200:
        return status, "", page
    return browser.post_form(link, page, fields or {})


def test_signup_and_reset_mails_arrive_by_smtp_and_their_links_work_once(served):
    base, inbox, data_dir = served
    owner = Browser(base)
    status, _, page = sign_up(owner, "owner@example.com")
    assert status == 200 and "Check your mail to finish signing up" in page
    mail = inbox.last("owner@example.com")
    assert mail["Subject"] == "Finish signing up" and mail["From"] == "Sample <noreply@sample.example.com>"
    link = inbox.link("owner@example.com", base)
    status, url, page = press(owner, link)
    assert status == 200 and url == base + "/" and "owner@example.com" in page  # logged in
    assert press(Browser(base), link)[0] == 410  # once only

    forget_mail_limits(data_dir)
    stranger = Browser(base)
    _, _, page = stranger.open("/forgot")
    status, _, page = stranger.post_form("/forgot", page, {"email": "owner@example.com"})
    assert status == 200 and "Check your mail" in page
    assert inbox.last("owner@example.com")["Subject"] == "Reset your password"
    link = inbox.link("owner@example.com", base)
    new = "a new long passphrase"
    status, url, page = press(stranger, link, {"password": new, "confirm": new})
    assert status == 200 and url == base + "/" and "owner@example.com" in page
    assert inbox.last("owner@example.com")["Subject"] == "Your password was changed"
    assert "owner@example.com" not in owner.open("/")[2]  # the other session ended
    assert press(Browser(base), link, {"password": "x" * 12, "confirm": "x" * 12})[0] == 410

    # The owner (logged in again by the reset) invites a colleague: the invitation too
    # goes by SMTP, and its link works once.
    status, _, page = stranger.open("/team")
    status, _, page = stranger.post_form("/team", page, {"email": "ed@example.com", "role": "editor"})
    assert status == 200 and "Invitation sent to ed@example.com" in page
    mail = inbox.last("ed@example.com")
    assert mail["Subject"] == "Join Acme" and "as editor" in mail.get_content()
    link = inbox.link("ed@example.com", base)
    ed = Browser(base)
    status, url, page = press(ed, link, {"password": PASSWORD, "confirm": PASSWORD})
    assert status == 200 and url == base + "/" and "ed@example.com" in page
    assert press(Browser(base), link, {"password": PASSWORD, "confirm": PASSWORD})[0] == 410


def test_known_and_unknown_addresses_get_the_same_answer_in_about_the_same_time(served, capsys):
    base, inbox, data_dir = served
    owner = Browser(base)
    sign_up(owner, "owner@example.com")
    assert press(owner, inbox.link("owner@example.com", base))[0] == 200

    def answer(path, fields):
        forget_mail_limits(data_dir)
        browser = Browser(base)
        _, _, page = browser.open(path)
        started = time.perf_counter()
        status, _, page = browser.post_form(path, page, fields)
        return time.perf_counter() - started, status, same_page(page)

    timings = {}
    for path, fields in (("/forgot", {}), ("/signup", {"account": "Acme", "password": PASSWORD, "confirm": PASSWORD})):
        known, unknown = [], []
        for n in range(15):
            seconds, status, page = answer(path, {**fields, "email": "owner@example.com"})
            seconds_unknown, status_unknown, page_unknown = answer(path, {**fields, "email": f"nobody{n}@example.com"})
            assert (status, page) == (status_unknown, page_unknown) and status == 200
            known.append(seconds)
            unknown.append(seconds_unknown)
        timings[path] = statistics.median(known), statistics.median(unknown)
    with capsys.disabled():
        for path, (known, unknown) in timings.items():
            print(f"\n{path}: median {known * 1000:.1f} ms for a known address, {unknown * 1000:.1f} ms for an unknown one")
    for known, unknown in timings.values():
        # A generous bound (no flaky timing): both do the same work, so the medians are
        # within noise; a lookup that hashed only for known addresses would be far off.
        assert abs(known - unknown) < 0.5 * max(known, unknown) + 0.02
