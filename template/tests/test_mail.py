"""Mail (the outbox, SMTP failures, links), sign-up through a mailed link, email
verification, password reset, and the same answer for known and unknown addresses."""

import email
import email.policy
import os
import re
import socket

import pytest

from app import create_app
from app.db import get_db

from conftest import PASSWORD, TEST_CONFIG, AuthActions, forget_mail_requests, link_in, mails

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture(autouse=True)
def verifying(app):
    """These tests verify addresses whatever this vertical's spec says (verify_email);
    those about an app that does not, turn it off themselves."""
    app.config["VERIFY_EMAIL"] = True


def query(app, sql, *args):
    with app.app_context():
        return get_db().execute(sql, args).fetchall()


def same_page(response):
    """The page without what differs between any two requests: the CSRF token, and
    the address typed (which the page repeats)."""
    text = re.sub(r'"X-CSRFToken": "[^"]+"', "", response.get_data(as_text=True))
    return re.sub(r"[\w.+-]+@example\.com", "ADDRESS", text)


def expire_links(app):
    with app.app_context():
        db = get_db()
        with db:
            db.execute("""UPDATE "app_token" SET "expires_at" = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-1 minute')""")


# -- the outbox -----------------------------------------------------------------------


def test_mail_test_command_writes_one_message_to_the_outbox(app, runner):
    result = runner.invoke(args=["mail-test", "founder@example.com"])
    assert result.exit_code == 0, result.output
    assert "the outbox" in result.output
    outbox = os.path.join(app.config["DATA_DIR"], "outbox")
    names = os.listdir(outbox)
    assert len(names) == 1 and re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.eml", names[0]), names
    with open(os.path.join(outbox, names[0]), "rb") as f:
        message = email.message_from_binary_file(f, policy=email.policy.default)
    assert message["To"] == "founder@example.com"
    assert message["From"] and message["Date"] and message["Message-ID"]
    assert "Mail works." in message.get_content()
    assert oct(os.stat(os.path.join(outbox, names[0])).st_mode & 0o777) == "0o600"


def test_the_app_says_on_start_that_mail_goes_to_the_outbox(tmp_path, caplog):
    create_app({**TEST_CONFIG, "DATA_DIR": str(tmp_path)})
    assert f"mail is written to {tmp_path}/outbox" in caplog.text


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mail_server_gives_the_same_clear_page(app, client, auth):
    auth.signup()
    auth.logout()
    forget_mail_requests(app)
    app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=closed_port(), SMTP_TIMEOUT=2)
    known = app.test_client().post("/forgot", data={"email": "owner@example.com"})
    unknown = app.test_client().post("/forgot", data={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 503
    assert same_page(known) == same_page(unknown)
    assert "could not send the mail" in known.text
    assert app.test_cli_runner().invoke(args=["mail-test", "founder@example.com"]).exit_code == 1


def test_links_in_mails_start_with_base_url(app, client):
    app.config["BASE_URL"] = "https://shop.example.com/"
    client.post("/forgot", data={"email": "nobody@example.com"})
    assert "https://shop.example.com/signup" in mails(app)[-1].get_content()


def test_links_in_mails_name_the_host_without_base_url(app, client):
    client.post("/signup", data={"account": "Acme", "email": "owner@example.com", "password": PASSWORD, "confirm": PASSWORD},
                base_url="http://shop.localhost:8080")
    assert re.search(r"http://shop\.localhost:8080/verify/\S+", mails(app)[-1].get_content())


# -- sign-up through the mailed link --------------------------------------------------


def test_signup_makes_the_account_only_from_the_mailed_link(app, client):
    data = {"account": "Acme", "email": "Owner@Example.com", "password": PASSWORD, "confirm": PASSWORD}
    response = client.post("/signup", data=data)
    assert response.status_code == 200 and "Check your mail to finish signing up" in response.text
    assert query(app, 'SELECT count(*) FROM "user"')[0][0] == 0
    [mail] = mails(app)
    assert mail["To"] == "owner@example.com" and mail["Subject"] == "Finish signing up"
    link = link_in(mail)
    page = client.get(link)
    assert page.status_code == 200 and "Acme" in page.text  # a button: opening does nothing
    assert query(app, 'SELECT count(*) FROM "user"')[0][0] == 0
    response = client.post(link)
    assert response.status_code == 302 and client.get("/").status_code == 200
    [user] = query(app, 'SELECT "email", "email_verified_at" FROM "user"')
    assert user[0] == "owner@example.com" and user[1] is not None
    client.post("/logout")
    assert AuthActions(client).login().status_code == 302  # the password chosen at sign-up
    # The link works once.
    again = client.get(link)
    assert again.status_code == 410 and "already been used" in again.text
    assert client.post(link).status_code == 410
    assert query(app, 'SELECT count(*) FROM "account"')[0][0] == 1


def test_a_signup_link_expires(app, client):
    client.post("/signup", data={"account": "Acme", "email": "owner@example.com", "password": PASSWORD, "confirm": PASSWORD})
    expire_links(app)
    link = link_in(mails(app)[-1])
    for response in (client.get(link), client.post(link)):
        assert response.status_code == 410 and "expired" in response.text
    assert query(app, 'SELECT count(*) FROM "user"')[0][0] == 0


def test_an_unknown_link_is_not_found(client):
    for path in ("/verify/nonsense", "/reset/nonsense"):
        response = client.get(path)
        assert response.status_code == 404 and "not valid" in response.text


def test_only_the_hash_of_a_token_is_stored(app, client):
    client.post("/forgot", data={"email": "x@example.com"})
    client.post("/signup", data={"account": "Acme", "email": "owner@example.com", "password": PASSWORD, "confirm": PASSWORD})
    token = link_in(mails(app)[-1]).rsplit("/", 1)[1]
    stored = [row[0] for row in query(app, 'SELECT "hash" FROM "app_token"')]
    assert token not in stored and len(stored) == 1 and re.fullmatch(r"[0-9a-f]{64}", stored[0])


def test_two_links_for_one_address_make_one_account(app, client, auth):
    data = {"account": "Acme", "email": "owner@example.com", "password": PASSWORD, "confirm": PASSWORD}
    client.post("/signup", data=data)
    forget_mail_requests(app)
    client.post("/signup", data=data)
    first, second = (link_in(m) for m in mails(app))
    assert client.post(first).status_code == 302
    client.post("/logout")
    response = client.post(second, follow_redirects=True)
    assert "has an account already" in response.text
    assert query(app, 'SELECT count(*) FROM "user"')[0][0] == 1


# -- the same answer for known and unknown addresses ----------------------------------


def test_signup_answers_a_known_and_an_unknown_address_alike(app, client, auth):
    auth.signup()  # owner@example.com has an account
    auth.logout()
    forget_mail_requests(app)
    data = {"account": "Someone else", "password": PASSWORD, "confirm": PASSWORD}
    clients = app.test_client(), app.test_client()
    known = clients[0].post("/signup", data={**data, "email": "OWNER@example.com"})
    unknown = clients[1].post("/signup", data={**data, "email": "newcomer@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert same_page(known) == same_page(unknown)
    assert sorted(known.headers.keys()) == sorted(unknown.headers.keys())
    for each in clients:  # neither is logged in (their cookies hold a CSRF token only)
        assert "Log in" in each.get("/").text
    # The owner is told, and no second account is made.
    notice = mails(app, "owner@example.com")[-1]
    assert notice["Subject"] == "Someone tried to sign up with your address"
    assert "/forgot" in notice.get_content() and "/login" in notice.get_content()
    assert mails(app, "newcomer@example.com")[-1]["Subject"] == "Finish signing up"
    assert [row[0] for row in query(app, 'SELECT "email" FROM "user"')] == ["owner@example.com"]


def test_forgot_answers_a_known_and_an_unknown_address_alike(app, client, auth):
    auth.signup()
    auth.logout()
    forget_mail_requests(app)
    known = app.test_client().post("/forgot", data={"email": "owner@example.com"})
    unknown = app.test_client().post("/forgot", data={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert same_page(known) == same_page(unknown)
    assert mails(app, "owner@example.com")[-1]["Subject"] == "Reset your password"
    assert mails(app, "nobody@example.com")[-1]["Subject"] == "Password reset"
    assert "no account uses it" in mails(app, "nobody@example.com")[-1].get_content()


def test_mails_asked_for_are_limited_per_address_alike(app, client, auth):
    """One a minute and five an hour to one recipient, known or not: the 429 tells nothing."""
    auth.signup()
    auth.logout()
    forget_mail_requests(app)
    for address in ("owner@example.com", "nobody@example.com"):
        assert client.post("/forgot", data={"email": address}).status_code == 200
    known = app.test_client().post("/forgot", data={"email": "owner@example.com"})
    unknown = app.test_client().post("/forgot", data={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 429
    assert same_page(known) == same_page(unknown)
    assert len(mails(app, "nobody@example.com")) == 1
    with app.app_context():  # a minute later: another, until five in the hour
        db = get_db()
        for _ in range(4):
            with db:
                db.execute("""UPDATE "app_mail_request" SET "created_at" = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-2 minutes')""")
            assert client.post("/forgot", data={"email": "nobody@example.com"}).status_code == 200
        with db:
            db.execute("""UPDATE "app_mail_request" SET "created_at" = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-2 minutes')""")
    assert client.post("/forgot", data={"email": "nobody@example.com"}).status_code == 429
    assert len(mails(app, "nobody@example.com")) == 5


# -- password reset -------------------------------------------------------------------


def test_reset_sets_the_password_once_and_ends_every_other_session(app, client, auth):
    auth.signup()
    other = app.test_client()  # the same user, logged in elsewhere
    assert AuthActions(other).login().status_code == 302
    stranger = app.test_client()
    forget_mail_requests(app)
    stranger.post("/forgot", data={"email": "owner@example.com"})
    link = link_in(mails(app, "owner@example.com")[-1])
    assert link.startswith("/reset/")
    page = stranger.get(link)
    assert page.status_code == 200 and 'name="password"' in page.text
    response = stranger.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 302
    assert stranger.get("/").status_code == 200 and "owner@example.com" in stranger.get("/").text  # logged in
    for ended in (client, other):
        assert "owner@example.com" not in ended.get("/").text
    assert AuthActions(app.test_client()).login(password=NEW_PASSWORD).status_code == 302
    assert AuthActions(app.test_client()).login().status_code == 200  # the old one no longer works
    notice = mails(app, "owner@example.com")[-1]
    assert notice["Subject"] == "Your password was changed"
    # The link works once.
    assert stranger.get(link).status_code == 410
    assert stranger.post(link, data={"password": "yet another password", "confirm": "yet another password"}).status_code == 410
    assert AuthActions(app.test_client()).login(password=NEW_PASSWORD).status_code == 302


def test_a_reset_link_expires(app, client, auth):
    auth.signup()
    auth.logout()
    forget_mail_requests(app)
    client.post("/forgot", data={"email": "owner@example.com"})
    expire_links(app)
    link = link_in(mails(app, "owner@example.com")[-1])
    response = client.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 410 and "expired" in response.text
    assert AuthActions(client).login().status_code == 302  # the password is unchanged


def test_reset_checks_the_new_password(app, client, auth):
    auth.signup()
    auth.logout()
    forget_mail_requests(app)
    client.post("/forgot", data={"email": "owner@example.com"})
    link = link_in(mails(app, "owner@example.com")[-1])
    response = client.post(link, data={"password": "short", "confirm": "short"})
    assert response.status_code == 200 and "at least 8" in response.text.lower()
    assert client.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}).status_code == 302  # still usable


def test_login_page_links_to_forgot(client):
    assert 'href="/forgot"' in client.get("/login").text


# -- verification of users who signed up without it ----------------------------------


@pytest.fixture
def unverified(app, client, auth):
    """`client`, logged in as a user who signed up while verification was off."""
    app.config["VERIFY_EMAIL"] = False
    assert auth.signup().status_code == 302
    app.config["VERIFY_EMAIL"] = True
    return client


def test_without_verification_signup_logs_in_at_once(app, client, auth):
    app.config["VERIFY_EMAIL"] = False
    response = auth.signup()
    assert response.status_code == 302 and mails(app) == []
    assert query(app, 'SELECT "email_verified_at" FROM "user"')[0][0] is None
    assert "verify your email" not in client.get("/").text.lower()  # no banner: verification is off
    auth.logout()
    # A known address still gets "check your mail", and its owner a notice.
    response = auth.signup(account="Someone else")
    assert response.status_code == 200 and "Check your mail" in response.text
    assert mails(app)[-1]["Subject"] == "Someone tried to sign up with your address"


def test_an_unverified_user_sees_a_banner_and_verifies(app, unverified):
    page = unverified.get("/").text
    assert "Please verify your email address" in page and 'action="/verify"' in page
    response = unverified.post("/verify", data={"next": "/"})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    mail = mails(app, "owner@example.com")[-1]
    assert mail["Subject"] == "Verify your email address"
    assert AuthActions(unverified).open_link(link_in(mail)).status_code == 302
    assert query(app, 'SELECT "email_verified_at" FROM "user"')[0][0] is not None
    assert "Please verify your email address" not in unverified.get("/").text
    assert unverified.get(link_in(mail)).status_code == 410


def test_resending_the_verification_is_limited(app, unverified):
    assert unverified.post("/verify").status_code == 302
    response = unverified.post("/verify", follow_redirects=True)
    assert "Wait a minute" in response.text
    assert len(mails(app, "owner@example.com")) == 1


def test_an_unverified_user_may_use_the_app(app, unverified):
    """The banner nags; nothing is refused (app/tokens.py)."""
    pages = [rule.rule for rule in app.url_map.iter_rules() if rule.rule.endswith("/new")]
    assert pages
    for page in pages:
        assert unverified.get(page).status_code == 200


def test_a_reset_verifies_the_address(app, unverified, auth):
    auth.logout()
    unverified.post("/forgot", data={"email": "owner@example.com"})
    link = link_in(mails(app, "owner@example.com")[-1])
    unverified.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert query(app, 'SELECT "email_verified_at" FROM "user"')[0][0] is not None


BEFORE_MAIL = """CREATE TABLE "user" (
    "id" INTEGER PRIMARY KEY,
    "account_id" INTEGER NOT NULL REFERENCES "account"("id") ON DELETE CASCADE,
    "email" TEXT NOT NULL UNIQUE,  -- stored lower-case
    "password_hash" TEXT NOT NULL,
    "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
)"""


def test_users_from_before_verification_count_as_verified_after_migrate(app, runner):
    """A database made before the app mailed anything: migrate keeps every user and
    session, and marks the users verified, so nobody is nagged or locked out."""
    from app.auth import hash_password
    from app.db import connect

    with app.app_context():
        password_hash = hash_password(PASSWORD)
    conn = connect(app.config["DATABASE"])
    conn.execute("PRAGMA foreign_keys = OFF")
    with conn:
        conn.execute('DROP TABLE "app_token"')
        conn.execute('DROP TABLE "app_mail_request"')
        conn.execute('DROP TABLE "user"')
        conn.execute(BEFORE_MAIL)
        conn.execute("""INSERT INTO "account" ("name") VALUES ('Acme')""")
        conn.execute(
            """INSERT INTO "user" ("account_id", "email", "password_hash") VALUES (1, 'owner@example.com', ?)""",
            (password_hash,),
        )
    conn.close()
    result = runner.invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    assert 'rebuilt table "user" (1 row): added "email_verified_at"' in result.output
    [(email, verified)] = query(app, 'SELECT "email", "email_verified_at" FROM "user"')
    assert email == "owner@example.com" and verified is not None
    client = app.test_client()
    assert AuthActions(client).login().status_code == 302
    assert "Please verify" not in client.get("/").text
