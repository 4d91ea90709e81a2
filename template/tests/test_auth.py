"""Sign up, log in, log out, change password, and where login sends you afterwards."""

import sqlite3

import pytest
from flask import g, session

from app import create_app
from app.auth import hash_password
from app.db import get_db

from conftest import PASSWORD, AuthActions, forget_mail_requests


def test_signup_page(client):
    response = client.get("/signup")
    assert response.status_code == 200
    for name in ("account", "email", "password", "confirm"):
        assert f'name="{name}"'.encode() in response.data
    assert b"At least 8 characters, not easy to guess." in response.data  # what a password needs, up front


def test_signup_creates_account_and_user_and_logs_in(app, client, auth):
    response = auth.signup(email="Owner@Example.com", account="Acme Cheese")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    with app.app_context():
        user = get_db().execute(
            'SELECT "user".*, "account"."name" AS account_name FROM "user" JOIN "account" ON "account"."id" = "user"."account_id"'
        ).fetchone()
    assert user["email"] == "owner@example.com"  # stored lower-case
    assert user["account_name"] == "Acme Cheese"
    assert user["password_hash"].startswith("scrypt:")
    assert PASSWORD not in user["password_hash"]
    with client:
        client.get("/")
        assert g.user["email"] == "owner@example.com"
        assert session["user_id"] == user["id"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("account", "", b"This field is required."),
        ("account", "   ", b"This field is required."),
        ("account", "x" * 101, b"Field cannot be longer than 100 characters."),
        ("account", "Acme\x00", b"Remove the control characters (such as NUL) from this text."),
        ("email", "", b"This field is required."),
        ("email", "not-an-email", b"Invalid email address."),
        ("password", "short", b"Field must be between 8 and 200 characters long."),
        ("confirm", "something else", b"The passwords do not match."),
    ],
)
def test_signup_validation(app, client, field, value, message):
    data = {"account": "Acme", "email": "owner@example.com", "password": PASSWORD, "confirm": PASSWORD}
    data[field] = value
    response = client.post("/signup", data=data)
    assert response.status_code == 200
    assert message in response.data
    with app.app_context():
        assert get_db().execute('SELECT count(*) FROM "account"').fetchone()[0] == 0


def test_spaces_around_the_email_are_ignored(app, client, auth):
    assert auth.signup(email="  Owner@Example.com ", account="  Acme  ").status_code == 302
    with app.app_context():
        assert tuple(get_db().execute('SELECT "email", "name" FROM "user" JOIN "account" ON "account"."id" = "account_id"').fetchone()) == (
            "owner@example.com",
            "Acme",
        )
    auth.logout()
    assert auth.login(email=" owner@example.com  ").status_code == 302


def test_emails_are_one_spelling(app, client, auth):
    """Upper case and Unicode compatibility forms (the "ﬀ" ligature) are the same email."""
    assert auth.signup(email="Owner@Diﬀerent.example").status_code == 302
    auth.logout()
    assert auth.login(email="owner@different.example").status_code == 302
    auth.logout()
    forget_mail_requests(app)
    assert auth.signup(email="OWNER@DIFFERENT.EXAMPLE", account="Someone else").status_code == 200
    with app.app_context():
        assert [r[0] for r in get_db().execute('SELECT "email" FROM "user"')] == ["owner@different.example"]


def test_an_email_stored_before_folding_still_logs_in(app, auth):
    """Accounts made before emails were NFKC-folded keep their spelling, and log in."""
    with app.app_context():
        db = get_db()
        account = db.execute("""INSERT INTO "account" ("name") VALUES ('Old')""").lastrowid
        db.execute(
            'INSERT INTO "user" ("account_id", "email", "password_hash") VALUES (?, ?, ?)',
            (account, "ann@di\ufb00erent.example", hash_password(PASSWORD)),
        )
        db.commit()
    assert auth.login(email="Ann@Di\ufb00erent.example").status_code == 302


def test_login_and_logout(client, auth):
    auth.signup()
    auth.logout()
    assert client.get("/login").status_code == 200
    response = auth.login(email="OWNER@example.com")  # emails are not case-sensitive
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    with client:
        client.get("/")
        assert g.user["email"] == "owner@example.com"
        response = auth.logout()
        assert response.status_code == 302
        assert "user_id" not in session
    response = client.get("/")
    assert b"Log in" in response.data


def test_logout_needs_post(client, auth):
    auth.signup()
    assert client.get("/logout").status_code == 405


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("owner@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
    ],
)
def test_login_refused(client, auth, email, password):
    auth.signup()
    auth.logout()
    response = auth.login(email=email, password=password)
    assert response.status_code == 200
    assert b"Wrong email or password." in response.data
    with client.session_transaction() as s:
        assert "user_id" not in s


def test_login_required_sends_back_after_login(client, auth):
    auth.signup()
    auth.logout()
    response = client.get("/account/password")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/account/password"
    response = auth.login(query_string={"next": "/account/password"})
    assert response.headers["Location"] == "/account/password"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "\\\\evil.example/",
        "/\t/evil.example/",
        "http:/evil.example/",
        "javascript:alert(1)",
        "evil.example",
        "",
    ],
)
def test_login_refuses_open_redirect(client, auth, target):
    auth.signup()
    auth.logout()
    response = auth.login(query_string={"next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    response = client.post("/login", data={"email": "owner@example.com", "password": PASSWORD, "next": target})
    assert response.headers["Location"] == "/"


def test_change_password(app, client, auth):
    auth.signup()
    response = client.post(
        "/account/password",
        data={"current_password": PASSWORD, "password": "a new long password", "confirm": "a new long password"},
    )
    assert response.status_code == 302
    auth.logout()
    assert b"Wrong email or password." in auth.login().data
    assert auth.login(password="a new long password").status_code == 302


def test_login_required_sends_htmx_to_the_whole_login_page(client):
    """The live search of a logged-out visitor: htmx loads the login page, rather than
    following a redirect and swapping the page into the table."""
    response = client.get("/account/password", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login?next=/account/password"
    assert "Location" not in response.headers
    # htmx reloading a page for the Back button takes the page it gets: the login page.
    response = client.get("/account/password", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/account/password"


@pytest.mark.parametrize(
    ("current", "new", "confirm", "message"),
    [
        ("wrong password", "a new long password", "a new long password", b"This is not your current password."),
        (PASSWORD, "short", "short", b"Field must be between 8 and 200 characters long."),
        (PASSWORD, "a new long password", "another one entirely", b"The passwords do not match."),
    ],
)
def test_change_password_refused(client, auth, current, new, confirm, message):
    auth.signup()
    response = client.post("/account/password", data={"current_password": current, "password": new, "confirm": confirm})
    assert response.status_code == 200
    assert message in response.data
    auth.logout()
    assert auth.login().status_code == 302  # the old password still works


def test_guesses_at_the_current_password_are_throttled(app, client, auth):
    auth.signup()
    wrong = {"current_password": "a wrong guess", "password": "a new long password", "confirm": "a new long password"}
    for _ in range(5):
        assert client.post("/account/password", data=wrong).status_code == 200
    # Five failures of this user, here or on the login page: even the right one waits.
    response = client.post("/account/password", data=dict(wrong, current_password=PASSWORD))
    assert response.status_code == 429
    assert "Retry-After" in response.headers
    auth.logout()
    assert auth.login().status_code == 429  # the login page counts them too
    with app.app_context():
        assert get_db().execute('SELECT count(*) FROM "login_attempt"').fetchone()[0] == 5


def test_change_password_ends_other_sessions(app, client, auth):
    auth.signup()
    laptop = app.test_client()
    assert AuthActions(laptop).login().status_code == 302
    client.post(
        "/account/password",
        data={"current_password": PASSWORD, "password": "a new long password", "confirm": "a new long password"},
    )
    assert client.get("/account/password").status_code == 200  # this session goes on
    assert laptop.get("/account/password").status_code == 302  # the other one is logged out


def test_logout_ends_a_copied_session_cookie(app, client, auth):
    auth.signup()
    name = app.config["SESSION_COOKIE_NAME"]
    copy = app.test_client()
    copy.set_cookie(name, client.get_cookie(name).value)
    assert copy.get("/account/password").status_code == 200  # the copy works while logged in
    auth.logout()
    assert copy.get("/account/password").status_code == 302  # and no more after logout
    with app.app_context():
        assert get_db().execute('SELECT count(*) FROM "app_session"').fetchone()[0] == 0


def test_session_renewal_waits_for_a_busy_database(app, client, auth):
    """A long migration or restore holds the write lock: pages are still served, and
    the session is renewed on a later request."""
    from app import db as app_db

    auth.signup()
    client.get("/")
    app_db._thread.conn.execute("PRAGMA busy_timeout = 50")  # the test's own connection
    with client.session_transaction() as s:
        s["renewed"] = "2000-01-01"
    blocker = sqlite3.connect(app.config["DATABASE"])
    blocker.execute("BEGIN IMMEDIATE")
    try:
        response = client.get("/account/password")
        assert response.status_code == 200
        assert not response.headers.getlist("Set-Cookie")  # not renewed yet
    finally:
        blocker.rollback()
        blocker.close()
    assert client.get("/account/password").headers.getlist("Set-Cookie")  # renewed now


def test_sessions_unused_for_a_lifetime_are_pruned(app, client, auth):
    auth.signup()
    laptop = app.test_client()
    AuthActions(laptop).login()
    with app.app_context():
        db = get_db()
        db.execute("""UPDATE "app_session" SET "renewed_on" = date('now', '-15 days')""")
        db.commit()
    with laptop.session_transaction() as s:
        s["renewed"] = "2000-01-01"  # the laptop's cookie was last renewed long ago too
    assert laptop.get("/account/password").status_code == 200  # its cookie still lives...
    with app.app_context():  # ...and its day of use renewed the row, as it renews the cookie
        assert get_db().execute("""SELECT count(*) FROM "app_session" WHERE "renewed_on" = date('now')""").fetchone()[0] == 1
    AuthActions(app.test_client()).login()  # a login prunes sessions unused for 14 days
    with app.app_context():
        assert get_db().execute('SELECT count(*) FROM "app_session"').fetchone()[0] == 2
    assert client.get("/account/password").status_code == 302


def test_production_hashes_with_full_strength_scrypt(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    app = create_app({"DATA_DIR": str(tmp_path)})  # no test config: the real defaults
    with app.app_context():
        assert hash_password("correct horse battery").startswith("scrypt:32768:8:1$")
