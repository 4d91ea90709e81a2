"""Fixtures for the app's tests: a fresh app and database per test, and logged-in clients.

    def test_something(client, auth):
        auth.signup()              # signs up owner@example.com and stays logged in
        client.get("/")            # ...as that user

    def test_two_accounts(client, auth, other_client):
        auth.signup()              # client: owner@example.com, account "Acme"
        other_client.get("/")      # another client, logged in to account "Other Co"

Mail goes to the outbox (DATA_DIR/outbox) in tests: `mails(app)` reads it.
"""

import email
import email.policy
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app import create_app
from app.auth import normal_email
from app.db import get_db

PASSWORD = "correct horse battery"

TEST_CONFIG = {
    "TESTING": True,
    "WTF_CSRF_ENABLED": False,
    # Still scrypt, with a smaller work factor than production's, so tests run fast.
    "PASSWORD_HASH_METHOD": "scrypt:1024:8:1",
}


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)
    app = create_app({**TEST_CONFIG, "DATA_DIR": str(tmp_path)})
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def mails(app, to=None):
    """The mails in the app's outbox, oldest first (each an EmailMessage); only those
    to `to` when given."""
    found = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(Path(app.config["DATA_DIR"], "outbox").glob("*.eml"))
    ]
    return [m for m in found if to is None or m["To"] == to]


def link_in(message):
    """The path of the first link in a mail ("/verify/..."), or None."""
    found = re.search(r"https?://\S+", message.get_content())
    return urlsplit(found.group()).path if found else None


def forget_mail_requests(app):
    """As if an hour had passed since the last mail asked for: its limits start again."""
    with app.app_context():
        db = get_db()
        with db:
            db.execute('DELETE FROM "app_mail_request"')


class AuthActions:
    """Sign up, log in and log out through the real forms, on one test client."""

    def __init__(self, client):
        self.client = client

    def signup(self, email="owner@example.com", password=PASSWORD, account="Acme", csrf_token=None, **kwargs):
        """Sign up and, when the app mailed a link to finish, open it: the last response
        (a redirect to the dashboard, logged in, when it worked)."""
        to = normal_email(email)
        before = len(mails(self.client.application, to))
        data = {"account": account, "email": email, "password": password, "confirm": password}
        if csrf_token is not None:
            data["csrf_token"] = csrf_token
        response = self.client.post("/signup", data=data, **kwargs)
        sent = mails(self.client.application, to)[before:]
        if not sent or sent[-1]["Subject"] != "Finish signing up":
            return response  # refused, or the address has an account (its owner was told)
        return self.open_link(link_in(sent[-1]), **kwargs)

    def open_link(self, path, **kwargs):
        """Open a link from a mail and press its page's button (with the page's CSRF
        token, for the tests that turn CSRF on)."""
        page = self.client.get(path, **kwargs).get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        return self.client.post(path, data={"csrf_token": token.group(1)} if token else {}, **kwargs)

    def login(self, email="owner@example.com", password=PASSWORD, **kwargs):
        return self.client.post("/login", data={"email": email, "password": password}, **kwargs)

    def logout(self):
        return self.client.post("/logout")


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def logged_in(client, auth):
    """`client`, signed up and logged in as owner@example.com (account "Acme")."""
    response = auth.signup()
    assert response.status_code == 302, response.text
    return client


def invite(owner, email, role="editor"):
    """Invite `email` to the account of `owner` (an owner's client) as `role`; the path
    of the invitation link mailed."""
    response = owner.post("/team", data={"email": email, "role": role})
    assert response.status_code == 302, response.text
    return link_in(mails(owner.application, normal_email(email))[-1])


def member(app, owner, email, role):
    """A new client logged in as `email`, who accepted the invitation of `owner` as `role`."""
    client = app.test_client()
    response = client.post(invite(owner, email, role), data={"password": PASSWORD, "confirm": PASSWORD})
    assert response.status_code == 302, response.text
    return client


@pytest.fixture
def other_client(app):
    """A second client, signed up and logged in as other@example.com (account "Other Co")."""
    client = app.test_client()
    response = AuthActions(client).signup(email="other@example.com", account="Other Co")
    assert response.status_code == 302, response.text
    return client
