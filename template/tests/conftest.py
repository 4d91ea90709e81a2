"""Fixtures for the app's tests: a fresh app and database per test, and logged-in clients.

    def test_something(client, auth):
        auth.signup()              # signs up owner@example.com and stays logged in
        client.get("/")            # ...as that user

    def test_two_accounts(client, auth, other_client):
        auth.signup()              # client: owner@example.com, account "Acme"
        other_client.get("/")      # another client, logged in to account "Other Co"
"""

import pytest

from app import create_app

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


class AuthActions:
    """Sign up, log in and log out through the real forms, on one test client."""

    def __init__(self, client):
        self.client = client

    def signup(self, email="owner@example.com", password=PASSWORD, account="Acme", **kwargs):
        return self.client.post(
            "/signup", data={"account": account, "email": email, "password": password, "confirm": password}, **kwargs
        )

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


@pytest.fixture
def other_client(app):
    """A second client, signed up and logged in as other@example.com (account "Other Co")."""
    client = app.test_client()
    response = AuthActions(client).signup(email="other@example.com", account="Other Co")
    assert response.status_code == 302, response.text
    return client
